r"""bank_builder_node: record a nominal bank from a live camera, or build one from bags, as a ROS node.

Live recording (``sources`` empty, the default)::

    ros2 run semanom_ros bank_builder_node --ros-args -r image:=/camera/image_raw \\
        -p output_bank:=$HOME/banks/parking_lot -p model:=/path/to/dinov2-small
    ros2 service call /bank_builder_node/recording std_srvs/srv/SetBool "{data: false}"   # pause
    ros2 service call /bank_builder_node/recording std_srvs/srv/SetBool "{data: true}"    # resume
    ros2 service call /bank_builder_node/save std_srvs/srv/Trigger                       # calibrate + save

While recording, every accepted frame (stride, minimum interval, near-duplicate filter, maximum
count: the same settings as ``semanom-bank build``) is embedded and its patch vectors kept in
memory. ``~/save`` calibrates and writes the bank atomically and keeps recording (a later save
writes everything recorded so far); on shutdown (Ctrl-C) frames not yet saved are saved. The
subscription callback only drops the message into a one-slot mailbox; a worker thread decodes and
embeds, so a slow model drops frames instead of queueing them.

Offline (``sources`` set): builds from the listed bags / image folders with exactly the pipeline
``semanom-bank build`` runs (:func:`semanom_ros.workflows.build_bank.build_bank`), logs the summary and exits.
"""
from __future__ import annotations

import datetime as _dt
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
import rclpy.logging
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.msg import ParameterDescriptor
from std_srvs.srv import SetBool, Trigger

from semanom_ros.core.bank import MANIFEST, NominalBank
from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import ConfigError, ImageError, SemanomError
from semanom_ros.core.features import validate_rgb
from semanom_ros.core.bank.builder import PatchBankBuilder
from semanom_ros.core.selection import LiveFrameSelector, NearDuplicateFilter
from semanom_ros.io.images import ImageDecodeError, decode_image
from semanom_ros.workflows.bank_ops import calibrate_bank, remove_stale_temp_dirs
from semanom_ros.workflows.build_bank import BuildSummary, build_bank
from semanom_ros.workflows.settings import BuildOptions, resolve_build_settings

from .image_input import image_input, sensor_qos
from .params import BUILDER_BUILD_OPTIONS, BUILDER_PARAMS, config_values, declare_all
from .worker import LatestFrameWorker

__all__ = ["BankBuilderNode", "DEFAULT_NODE_NAME", "LiveStats", "main"]

DEFAULT_NODE_NAME = "bank_builder_node"


@dataclass
class LiveStats:
    """Counters of a live recording (written by the callback and worker threads)."""

    received: int = 0
    dropped: int = 0  # replaced in the mailbox by a newer frame before the worker took it
    paused: int = 0  # arrived while recording was paused
    bad_messages: int = 0  # undecodable or unusable
    near_duplicate: int = 0
    selection: dict[str, int] = field(default_factory=dict)  # stride / min_interval / max_count
    recorded: int = 0  # frames added to the bank
    vectors: int = 0
    unsaved: int = 0  # frames added since the last save
    saves: int = 0
    last_save_path: str = ""


class BankBuilderNode(Node):
    """See the module docstring. ``offline`` tells which mode the parameters chose."""

    _ready = False  # True once __init__ completed: destroy_node of a half-built node only destroys

    def __init__(self, node_name: str = DEFAULT_NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        rejected = declare_all(self, BUILDER_PARAMS)
        if rejected:  # one line (main logs it), not rclpy's traceback
            raise ConfigError("; ".join(rejected.values()))
        self.declare_parameter(
            "sources", Parameter.Type.STRING_ARRAY,
            ParameterDescriptor(description="Offline: bags (directory, .mcap, .db3) or image folders to build from; "
                                "empty = record live from 'image'."),
        )
        self.stats = LiveStats()
        self.config, self.options = self._settings()
        self.output = Path(self._param("output_bank")).expanduser().absolute()
        try:
            sources = self.get_parameter("sources").value
        except ParameterUninitializedException:  # declared with a type but no value: live recording
            sources = []
        self.sources: list[str] = [str(s) for s in (sources or [])]
        self.offline = bool(self.sources)
        self.summary: BuildSummary | None = None
        self._builder: Any = None
        self._lock = threading.Lock()  # the bank: worker adds vs. save
        self._worker = LatestFrameWorker(
            "bank_builder_worker", lambda item: self.record_message(*item), self._frame_failed
        )
        self._recording = bool(self._param("start_recording"))
        self._subscription = None
        self._input_topic = ""
        self._ready = True
        if not self.offline:
            self._start_live()

    # -- settings -----------------------------------------------------------------------------------------
    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _settings(self) -> tuple[PipelineConfig, BuildOptions]:
        output = str(self._param("output_bank")).strip()
        if not output:
            raise ConfigError("output_bank: not set; pass -p output_bank:=/path/to/bank")
        for spec in BUILDER_PARAMS:
            if spec.choices and self._param(spec.name) not in spec.choices:
                raise ConfigError(f"{spec.name}: {self._param(spec.name)!r} is not one of {', '.join(spec.choices)}")
        pipeline = config_values(self._param, BUILDER_PARAMS)
        options = {name: self._param(name) for name in BUILDER_BUILD_OPTIONS}
        return resolve_build_settings(
            output, append=bool(self._param("append")), pipeline_overrides=pipeline, build_overrides=options,
        )

    # -- offline ------------------------------------------------------------------------------------------
    def run_offline(self) -> BuildSummary:
        """Build from ``sources`` (the same pipeline as ``semanom-bank build``) and log the summary."""
        log = self.get_logger()
        options = BuildOptions(**{**self.options.__dict__, "progress": False})
        log.info(f"building {self.output} from {len(self.sources)} source(s)")
        self.summary = build_bank(self.sources, self.output, self.config, options, logger=log)
        for line in self.summary.format_text().splitlines():
            log.info(line)
        return self.summary

    # -- live ---------------------------------------------------------------------------------------------
    def _start_live(self) -> None:
        if self.config.mode != "patch":
            raise ConfigError("mode: live recording makes patch banks; use mode patch (instance banks: build offline)")
        if self.options.coreset_requested:
            self.get_logger().warning("coreset_* applies to offline builds; live banks are saved whole")
        bank = None
        if self.options.append:
            if not (self.output / MANIFEST).is_file():
                raise ConfigError(f"append: there is no bank at {self.output} to append to")
            bank = NominalBank.load(self.output)
        t0 = time.perf_counter()
        self._builder = PatchBankBuilder(self.config, bank=bank)  # BankMismatchError for another model
        self._extractor = self._builder.extractor
        self._selector = LiveFrameSelector(
            self.options.stride, float(self.options.min_interval_s), self.options.max_frames
        )
        self._dedup = NearDuplicateFilter(self.options.dedup_similarity)
        self._input_topic, msg_type = self._resolve_input()
        started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        # One source per recording session, so frame ordinals of two sessions never look adjacent.
        self._source = f"live {self._input_topic} {started}"
        self._worker.start()
        group = MutuallyExclusiveCallbackGroup()
        self._subscription = self.create_subscription(
            msg_type, self._input_topic, self._on_image, sensor_qos(str(self._param("reliability"))),
            callback_group=group,
        )
        services = MutuallyExclusiveCallbackGroup()
        self._save_srv = self.create_service(Trigger, "~/save", self._on_save, callback_group=services)
        self._recording_srv = self.create_service(SetBool, "~/recording", self._on_recording, callback_group=services)
        self.get_logger().info(
            f"{'recording' if self._recording else 'paused'}: {self._input_topic} ({msg_type.__name__}) -> "
            f"{self.output}{' (append)' if self.options.append else ''}; model {self.config.model} at input height "
            f"{self._extractor.input_height}, loaded in {time.perf_counter() - t0:.1f} s. "
            f"Call {self.get_fully_qualified_name()}/save to calibrate and save."
        )

    @property
    def input_topic(self) -> str:
        return self._input_topic

    @property
    def recording(self) -> bool:
        return self._recording

    @property
    def bank(self) -> NominalBank | None:
        return self._builder.bank if self._builder is not None else None

    def _resolve_input(self) -> tuple[str, Any]:
        """(topic, message class) from ``image`` (after remapping) and ``input_type``."""
        return image_input(self.resolve_topic_name("image"), str(self._param("input_type")))

    def _on_image(self, msg: Any) -> None:
        index = self.stats.received  # message ordinal on the topic (frame index in the bank)
        self.stats.received += 1
        if not self._recording:
            self.stats.paused += 1
            return
        if self._worker.offer((msg, index)):
            self.stats.dropped += 1

    def _frame_failed(self, exc: Exception) -> None:
        self.stats.bad_messages += 1
        self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)

    def record_message(self, msg: Any, index: int | None = None) -> bool:
        """Decode, select, embed and add one image message; True when it went into the bank."""
        if index is None:
            index = self.stats.received
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        stamp = stamp or time.time_ns()
        where = f"topic {self._input_topic!r} message #{index} at {stamp} ns"
        if not self._recording:
            self.stats.paused += 1
            return False
        reason = self._selector.offer(stamp)
        if reason is not None:
            self.stats.selection[reason] = self.stats.selection.get(reason, 0) + 1
            return False
        try:
            rgb = decode_image(msg)
            validate_rgb(rgb, min_side=self._extractor.patch_size)
        except (ImageDecodeError, ImageError) as exc:
            self._selector.undo_accept()
            self.stats.bad_messages += 1
            self.get_logger().warning(f"skipping {where}: {exc}", throttle_duration_sec=5.0)
            return False
        feat = self._extractor.extract(rgb)
        with self._lock:
            if not self._dedup.keep(self._source, feat.cls):
                self._selector.undo_accept()
                self.stats.near_duplicate += 1
                return False
            frame = _LiveFrame(rgb, self._source, index, stamp, self._input_topic)
            before = len(self._builder.bank)
            self._builder.add_features(frame, feat)
            self.stats.recorded += 1
            self.stats.unsaved += 1
            self.stats.vectors += len(self._builder.bank) - before
        return True

    # -- services -----------------------------------------------------------------------------------------
    def _on_recording(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._recording = bool(request.data)
        response.success = True
        response.message = (
            f"{'recording' if self._recording else 'paused'}; {self.stats.recorded} frames recorded, "
            f"{self.stats.unsaved} not saved yet"
        )
        self.get_logger().info(response.message)
        return response

    def _on_save(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        ok, message = self.save(calibrate=bool(self.options.calibrate), require_calibration=True)
        response.success, response.message = ok, message
        return response

    def save(self, *, calibrate: bool = True, require_calibration: bool = True) -> tuple[bool, str]:
        """Calibrate and save atomically; (success, message). Recording continues afterwards.

        With ``require_calibration`` a failed calibration saves nothing (the frames stay in memory);
        without (shutdown), the bank is saved uncalibrated rather than lost.
        """
        log = self.get_logger()
        if self._builder is None:
            return False, "not recording (offline mode)"
        with self._lock:
            bank = self._builder.bank
            if bank.num_frames == 0:
                return False, f"nothing to save: no frame recorded yet on {self._input_topic}"
            t0 = time.perf_counter()
            cal_note = "not calibrated"
            bank.calibration = None
            if calibrate:
                try:
                    cal = calibrate_bank(bank, self.config)
                    cal_note = f"threshold {cal['threshold']:.4f} at alpha {cal['alpha']}"
                except (SemanomError, ValueError, IndexError) as exc:
                    if require_calibration:
                        message = (f"not saved: calibration failed ({exc}); keep recording, or lower "
                                   "calibration_window")
                        log.error(message)
                        return False, message
                    cal_note = f"NOT calibrated ({exc}); run 'semanom-bank calibrate {self.output}'"
            bank.extra["builds"] = list(bank.extra.get("builds", [])) + [self._record()]
            try:
                remove_stale_temp_dirs(self.output)
                bank.save(self.output)
            except (OSError, SemanomError) as exc:
                message = f"not saved: {exc}"
                log.error(message)
                return False, message
            self.stats.unsaved = 0
            self.stats.saves += 1
            self.stats.last_save_path = str(self.output)
            message = (
                f"saved {bank.num_frames} frames ({len(bank)} vectors) to {self.output}; {cal_note} "
                f"({time.perf_counter() - t0:.1f} s)"
            )
        log.info(message)
        return True, message

    def _record(self) -> dict[str, Any]:
        s = self.stats
        return {
            "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "live": True,
            "topic": self._input_topic,
            "source": self._source,
            "received": s.received,
            "recorded": s.recorded,
            "skipped": {
                "dropped_newest_only": s.dropped, "paused": s.paused, "bad_message": s.bad_messages,
                "near_duplicate": s.near_duplicate, **s.selection,
            },
        }

    # -- shutdown -----------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Stop listening and save what is not saved yet (called on shutdown)."""
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._worker.stop(timeout=60.0)
        if self._builder is not None and self.stats.unsaved > 0:
            self.get_logger().info(f"shutting down: saving {self.stats.unsaved} frames not saved yet")
            self.save(calibrate=bool(self.options.calibrate), require_calibration=False)

    def destroy_node(self) -> None:
        if self._ready:  # a node whose __init__ failed has nothing to stop or save
            self.finish()
        super().destroy_node()


@dataclass
class _LiveFrame:
    rgb: Any
    source: str
    index: int
    stamp_ns: int
    topic: str


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run semanom_ros bank_builder_node``; Ctrl-C saves unsaved frames."""
    rclpy.init(args=args)
    node = None
    status = 0
    executor = MultiThreadedExecutor()
    try:
        node = BankBuilderNode()
        if node.offline:
            node.run_offline()
        else:
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        if node is not None and node.offline:
            state = "unchanged" if (node.output / MANIFEST).is_file() else "not written"
            node.get_logger().warning(f"interrupted; bank at {node.output} {state}")
            status = 130
    except (SemanomError, ValueError, OSError) as exc:
        (node.get_logger() if node is not None else rclpy.logging.get_logger(DEFAULT_NODE_NAME)).error(str(exc))
        status = 1
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()  # saves unsaved live frames
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    import sys

    sys.exit(main())
