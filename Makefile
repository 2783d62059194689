# make setup : virtual environment with pinned dependencies + this package installed (ament index included)
# make test  : the whole test suite (unit, ROS-over-DDS, integration with the real weights in ../shared)
# make demo  : the monitor on real camera data (see README)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
SHARED ?= ../shared
TEST_ENV = OMP_NUM_THREADS=1 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST AMENT_PREFIX_PATH=$(abspath $(VENV)) SEMANOM_SHARED=$(abspath $(SHARED))

.PHONY: setup install test test-fast demo demo-node bench clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@grep -q AMENT_PREFIX_PATH $(VENV)/bin/activate || \
	  echo 'export AMENT_PREFIX_PATH="$$VIRTUAL_ENV$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH}"' >> $(VENV)/bin/activate
	$(MAKE) install

# Not editable: a real install puts data_files under $(VENV)/share and, for `ros2 run` / launch_ros, one
# launcher per console script under $(VENV)/lib/semanom_ros (setup.py writes them; test_install_layout.py).
install:
	$(PY) -m pip install --quiet --no-deps --force-reinstall .
	@rm -rf build *.egg-info

test: install
	$(TEST_ENV) $(PY) -m pytest -q -rs test

test-fast:
	$(TEST_ENV) $(PY) -m pytest -q -m "not integration" test

# The monitor on real camera data: a bank from the nominal highway rosbag, the labelled test frames scored
# (report + overlays in runs/demo/eval), and a replay of the bag into an MCAP of the monitor's output topics.
DEMO ?= runs/demo
demo: install
	$(VENV)/bin/semanom-bank build $(SHARED)/data/highway/bag_mcap -o $(DEMO)/bank \
	  --topic /camera/image_raw/compressed --stride 2 --model $(SHARED)/models/dinov2-small --no-progress
	$(VENV)/bin/semanom-eval --bank $(DEMO)/bank --data $(SHARED)/data/highway/test -o $(DEMO)/eval --no-progress
	$(VENV)/bin/semanom-replay $(SHARED)/data/highway/bag_mcap --bank $(DEMO)/bank -o $(DEMO)/replay.mcap \
	  --topic /camera/image_raw/compressed --max-frames 40 --overwrite --no-progress
	@echo "demo: report $(DEMO)/eval/report.md, overlays $(DEMO)/eval/examples.png, replay $(DEMO)/replay/"

# The ROS node itself on real frames: the highway frames published at 30 Hz over localhost DDS into monitor_node.
demo-node: install
	$(TEST_ENV) $(PY) bench/bench_monitor_node.py --seconds 20 --compressed

# Benchmarks print tables (quick mode; `bash bench/run_all.sh --full` adds the 2e6-vector banks).
bench: install
	$(TEST_ENV) PATH=$(abspath $(VENV))/bin:$$PATH bash bench/run_all.sh

clean:
	rm -rf build *.egg-info .pytest_cache
