"""monitor_node: a lifecycle node that scores camera frames for semantic anomalies in real time.

    ros2 run semanom_ros monitor_node --ros-args -p bank_path:=/path/to/bank -r image:=/camera/image_raw
    ros2 lifecycle set /semanom_monitor configure && ros2 lifecycle set /semanom_monitor activate

(or ``-p autostart:=true``, or ``ros2 launch semanom_ros monitor.launch.py``). The algorithm lives in
:mod:`semanom_ros.core` (:class:`~semanom_ros.core.monitor.Monitor`); this module only moves frames
and parameters in and messages out:

* configure: parameters -> PipelineConfig, load the model and the bank (a missing or mismatched
  bank leaves the node unconfigured with the reason in the log and on /diagnostics);
* activate: subscribe to ``image`` and start the worker thread; deactivate: unsubscribe, stop the
  worker, stop publishing; cleanup: free the model, the bank and GPU memory.
* The subscription callback only counts the message and drops it into a one-slot mailbox; the
  worker thread decodes, runs the engine and publishes. A frame that waits while another is
  processed is replaced by the next one and counted as dropped, so latency never grows with time.
  The reader history holds ``input_queue_depth`` messages, so none is replaced there uncounted
  while the callback runs late; gaps in the publishers' sequence numbers are counted as missed.
* Bounded work per frame: a message larger than ``max_input_pixels`` is refused from its header,
  a frame larger than ``max_output_pixels`` is shrunk before scoring (bounded maps), the backbone
  input width is capped (``max_input_width``) and frames of extreme aspect ratio are refused. A
  watchdog on /diagnostics reports a frame that still stalls (``stall_timeout_s``), and
  deactivate / shutdown never wait more than a few seconds for it: the worker is abandoned.
* Start-up parameters the descriptors refuse do not crash the node: it logs one line naming the
  parameter, the value and the allowed range, and refuses to configure until it is set right.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.exceptions import ParameterUninitializedException
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from semanom_ros.core.config import PipelineConfig
from semanom_ros.core.errors import ConfigError, ImageError, SemanomError
from semanom_ros.core.monitor import Monitor
from semanom_ros.io.images import ImageDecodeError, decode_image, downscale_to_pixels
from semanom_ros.io.messages import build_output_messages
from semanom_ros.workflows.settings import config_from_bank

from .params import CONFIGURE, RUNTIME, SPECS_BY_NAME, check_choice, config_values, declare_all
from .diagnostics import MonitorDiagnostics, MonitorStats, calibration_warning
from .dds_profile import apply_large_image_profile
from .decode_stage import DecodeAheadWorker
from .image_input import image_input, sensor_qos
from .memory import LARGE_FRAME_BYTES, bound_heap_growth, release_memory
from .publishers import OVERLAY_KEYS, OutputStage
from .worker import LatestFrameWorker

__all__ = ["DEFAULT_NODE_NAME", "MonitorNode", "main"]

DEFAULT_NODE_NAME = "semanom_monitor"
WARMUP_SIZE = (720, 1280)  # (height, width) of the synthetic warm-up frames: a common camera size

WORKER_STOP_TIMEOUT_S = 2.0  # deactivate / shutdown wait this long for the frame in hand, then abandon it
ENGINE_LOCK_TIMEOUT_S = 2.0  # a live parameter change or cleanup waits this long for the frame in hand


@dataclass
class _Engine:
    """The configured Monitor and the lock its frames and live parameter changes take turns on.

    One lock per Monitor: a frame abandoned on an old engine never blocks the next configure.
    """

    monitor: Monitor
    lock: threading.Lock


class MonitorNode(LifecycleNode):
    """Lifecycle node around :class:`semanom_ros.core.monitor.Monitor` (see the module docstring)."""

    _ready = False  # True once __init__ completed: destroy_node of a half-built node only destroys

    def __init__(self, node_name: str = DEFAULT_NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # Refused start-up values are replaced by defaults and listed here; configure fails until fixed.
        self._startup_errors = declare_all(self)
        for reason in self._startup_errors.values():
            self.get_logger().error(f"{reason}; the node stays unconfigured until it is set to an allowed value")
        # Registered after declaring, so start-up values are checked by configure, not here.
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.stats = MonitorStats()
        self._diagnostics = MonitorDiagnostics(self.stats)
        self._engine: _Engine | None = None
        self._large_frame = False  # the last frame was large: return memory once it is released
        bound_heap_growth()  # process-wide: large frames' blocks go back to the OS when freed
        self._worker: LatestFrameWorker | DecodeAheadWorker = self._make_worker()
        self._subscription = None
        self._out = OutputStage(self, self._param)  # publishers, alarm + ~/events, clips (nodes/publishers.py)
        self._input_topic = ""
        self._input_msg_type: Any = Image
        self._device = "-"
        self._publish_overlay = bool(self._param("publish_overlay"))
        self._publish_score_map = bool(self._param("publish_score_map"))
        self._drop_warn_fraction = float(self._param("drop_warn_fraction"))
        self._max_input_pixels = int(self._param("max_input_pixels"))
        self._max_output_pixels = int(self._param("max_output_pixels"))
        self._stall_timeout_s = float(self._param("stall_timeout_s"))
        self._min_rate_fraction = float(self._param("min_rate_fraction"))
        self._sub_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._transition_error = ""  # why the last configure/activate failed ('' after a success)

        # /diagnostics from start-up on: a failed configure is visible there, not only in the log.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_period = float(self._param("diagnostics_period_s"))
        self._diag_timer = self.create_timer(self._diag_period, self.publish_diagnostics,
                                             callback_group=self._diag_group)
        self._ready = True

    # -- helpers ------------------------------------------------------------------------------------------
    def _param(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # an empty string array is declared typed but unset
            return SPECS_BY_NAME[name].default

    @property
    def _monitor(self) -> Monitor | None:
        engine = self._engine
        return engine.monitor if engine is not None else None

    @property
    def monitor(self) -> Monitor | None:
        return self._monitor

    @property
    def input_topic(self) -> str:
        """The fully resolved input topic (set at configure)."""
        return self._input_topic

    @property
    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    def _fail(self, what: str, message: str) -> TransitionCallbackReturn:
        self.stats.record_error(message, bad_message=False)
        self._transition_error = f"{what} failed: {message}"
        self.get_logger().error(f"{what} failed: {message}")
        return TransitionCallbackReturn.FAILURE

    def build_config(self) -> tuple[PipelineConfig, Path]:
        """The PipelineConfig and bank directory from the parameters (unset ones take the bank's settings)."""
        bank_path = str(self._param("bank_path")).strip()
        if not bank_path:
            raise ConfigError(
                "bank_path: not set; pass -p bank_path:=/path/to/bank (build one with 'semanom-bank build') "
                "or set it in the parameter file"
            )
        bank_dir = Path(bank_path).expanduser()
        values = config_values(self._param)
        for name in ("input_type", "reliability", *values):
            reason = check_choice(name, self._param(name))
            if reason:
                raise ConfigError(reason)
        return config_from_bank(bank_dir, values), bank_dir  # BankError when bank_dir is not a bank

    def _resolve_input(self) -> tuple[str, Any]:
        """(topic, message class) from ``image`` (after remapping) and ``input_type``."""
        return image_input(self.resolve_topic_name("image"), str(self._param("input_type")))

    # -- lifecycle ----------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._startup_errors:
            reason = "; ".join(self._startup_errors.values())
            # The parameter's own line was logged at start-up: one line per problem, not two.
            self.stats.record_error(reason, bad_message=False)
            self._transition_error = f"configure failed: {reason}"
            self.get_logger().warning(
                f"configure refused until the start-up parameter(s) above are set: {', '.join(self._startup_errors)}")
            return TransitionCallbackReturn.FAILURE
        try:
            config, bank_dir = self.build_config()
            self._input_topic, self._input_msg_type = self._resolve_input()
            t0 = time.perf_counter()
            monitor = Monitor(config, bank_dir)
            self._warm_up(monitor, int(self._param("warmup_frames")))
            load_s = time.perf_counter() - t0
            self._out.configure()
        except SemanomError as exc:
            return self._fail("configure", str(exc))
        except Exception as exc:  # noqa: BLE001 - transformers/torch/faiss raise many types; all mean "cannot load"
            return self._fail("configure", f"{type(exc).__name__}: {exc}")
        self._engine = _Engine(monitor, threading.Lock())
        self._transition_error = ""
        self.stats.clear_error()  # an earlier failed configure no longer describes the node
        self._device = str(monitor.extractor.device)
        self._reset_diag_timer()
        self.get_logger().info(
            f"configured in {load_s:.1f} s: model {config.model} at input height {config.input_height} on "
            f"{self._device}, bank {bank_dir} ({len(monitor.bank)} vectors, {monitor.bank.num_frames} frames), "
            f"threshold {monitor.threshold:.4f}; input {self._input_topic} "
            f"({self._input_msg_type.__name__}, {self._param('reliability')})"
        )
        index = monitor.bank.index_info or {}
        self.get_logger().info(
            f"index {index.get('type')} (depth {index.get('search_depth')}, build-time recall@1 "
            f"{index.get('recall_at_1')}, "
            f"{'read from ' + index['loaded_from'] if 'loaded_from' in index else 'built now'})"
        )
        for warning in monitor.bank.warnings:  # e.g. a corrupt index.faiss that was rebuilt
            self.get_logger().warning(warning)
        if calibration_warning(monitor):
            self.get_logger().warning(f"bank calibration: {calibration_warning(monitor)}")
        return super().on_configure(state)

    @staticmethod
    def _warm_up(monitor: Monitor, frames: int) -> None:
        """Run the whole frame path on synthetic 1280x720 frames.

        So the first forward pass, the full-resolution maps and the output buffers are allocated at
        configure and not on the first camera frames (measured: RSS growth over the first real
        960x540 frames 36 MB -> 14 MB).
        """
        if frames <= 0:
            return
        rng = np.random.default_rng(0)
        texture = rng.integers(0, 255, (9, 16, 3), dtype=np.uint8)
        rgb = cv2.resize(texture, (WARMUP_SIZE[1], WARMUP_SIZE[0]), interpolation=cv2.INTER_CUBIC)
        header = Header()
        for _ in range(frames):
            result = monitor.process(rgb)
            build_output_messages(result, rgb, header, overlay_bgr=monitor.overlay(rgb, result))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._monitor is None:
            return self._fail("activate", "the node is not configured")
        ret = super().on_activate(state)  # enables the lifecycle publishers
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        self._start_worker()
        self.stats.forget_publishers()  # frames sent while inactive are not missed ones
        qos = sensor_qos(str(self._param("reliability")), int(self._param("input_queue_depth")))
        self._subscription = self.create_subscription(
            self._input_msg_type, self._input_topic, self._on_image, qos, callback_group=self._sub_group,
        )
        self.get_logger().info(f"active: listening on {self._input_topic}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._out.deactivate()
        self.get_logger().info("inactive: not listening, not publishing")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: model and bank released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._release()
        return super().on_error(state)  # SUCCESS -> unconfigured, ready to configure again

    def _make_worker(self) -> LatestFrameWorker | DecodeAheadWorker:
        if bool(self._param("decode_ahead")):
            return DecodeAheadWorker("semanom_monitor_worker", self._decode_item, self._process_decoded,
                                     self._frame_failed, self._count_drop, after=self._after_frame)
        return LatestFrameWorker("semanom_monitor_worker", lambda item: self.process_message(*item),
                                 self._frame_failed, after=self._after_frame)

    def _start_worker(self) -> None:
        self._worker = self._make_worker()  # decode_ahead is read at activation
        self._worker.start()

    def _count_drop(self) -> None:
        with self.stats.lock:
            self.stats.dropped += 1

    def _stop_input(self) -> None:
        """Unsubscribe, then stop the worker.

        The worker may finish the frame in hand for a few seconds; after that it is abandoned (its
        result is never published), so the transition is not held up.
        """
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        busy_since = self._worker.busy_since
        if not self._worker.stop(timeout=WORKER_STOP_TIMEOUT_S):
            busy = time.monotonic() - busy_since if busy_since is not None else 0.0
            self.get_logger().error(
                f"the frame in processing for {busy:.0f} s did not finish within {WORKER_STOP_TIMEOUT_S:g} s; "
                "its worker thread is abandoned (it ends with the frame, its result is dropped)"
            )

    def _release(self) -> None:
        self._out.release()
        engine, self._engine = self._engine, None
        self._device = "-"
        if engine is None:
            return
        if not engine.lock.acquire(timeout=ENGINE_LOCK_TIMEOUT_S):
            # An abandoned frame still uses the engine: leave it to the garbage collector once done.
            self.get_logger().warning("cleanup: a frame still uses the engine; its memory is freed when it ends")
            return
        try:
            engine.monitor.release()
        finally:
            engine.lock.release()
        del engine
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def destroy_node(self) -> None:
        if self._ready:  # a node whose __init__ failed has nothing of its own to stop or free
            self._stop_input()
            self._release()
        super().destroy_node()

    # -- frames -------------------------------------------------------------------------------------------
    def _on_image(self, msg: Any, info: MessageInfo | None) -> None:
        """Subscription callback: count the message and hand it to the worker, nothing else.

        It must keep up with the camera while the worker holds the CPU (and the GIL): any work
        here lets frames pile up in the reader history, where only ``input_queue_depth`` fit.
        ``info`` is required (no default), so rclpy passes the message info with each message.
        """
        gid = (info or {}).get("publisher_gid") or {}
        now = self.stats.record_received(gid.get("data"), (info or {}).get("publication_sequence_number"))
        if self._worker.offer((msg, now)):
            self._count_drop()

    def _after_frame(self) -> None:
        """Worker thread, after each message is let go: give a large frame's memory back to the OS."""
        if self._large_frame:
            self._large_frame = False
            release_memory()

    def _frame_failed(self, exc: Exception) -> None:
        self.stats.record_error(f"{type(exc).__name__}: {exc}", bad_message=False)
        self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)

    def process_message(self, msg: Any, received: float | None = None) -> dict[str, Any] | None:
        """Decode, score and publish one image message; returns the published messages (None if bad).

        This is what the worker runs for each message the subscription hands over. A bad message
        (undecodable, too large, extreme aspect ratio, smaller than a patch) is counted and logged,
        never raised; a frame larger than ``max_output_pixels`` is scored and published shrunk.
        """
        decoded = self._decode_item((msg, time.monotonic() if received is None else received))
        return None if decoded is None else self._process_decoded(decoded)

    def _decode_item(self, item: tuple[Any, float]) -> tuple[Any, np.ndarray, float, float, float] | None:
        """(msg, rgb, received, decode started, decode done), or None for a bad message (counted)."""
        msg, received = item
        started = time.monotonic()
        self._large_frame = self._large_frame or len(getattr(msg, "data", b"")) > LARGE_FRAME_BYTES
        try:
            rgb = decode_image(msg, max_pixels=self._max_input_pixels)
        except ImageDecodeError as exc:
            self._bad_message(str(exc))
            return None
        self._large_frame = self._large_frame or rgb.nbytes > LARGE_FRAME_BYTES
        return msg, rgb, received, started, time.monotonic()

    def _process_decoded(self, item: tuple[Any, np.ndarray, float, float, float]) -> dict[str, Any] | None:
        """Score and publish one decoded frame (the worker's half of :meth:`process_message`)."""
        msg, rgb, received, started, decoded_at = item
        rgb, scale = downscale_to_pixels(rgb, self._max_output_pixels)
        t0 = time.monotonic()
        engine = self._engine
        if engine is None:
            return None
        with engine.lock:
            monitor = engine.monitor
            try:
                result = self._score(monitor, rgb, scale)
            except ImageError as exc:  # e.g. smaller than one patch, or an extreme aspect ratio
                self._bad_message(str(exc))
                return None
            t1 = time.monotonic()
            keys = self._out.wanted_keys(self._publish_overlay, self._publish_score_map)
            overlay = monitor.overlay(rgb, result) if keys & OVERLAY_KEYS else None
        t2 = time.monotonic()
        if self._worker.cancelled():  # abandoned by deactivate / shutdown: nobody waits for this frame
            return None
        messages = self._out.publish(result, rgb, msg, overlay, keys)
        done = time.monotonic()
        engine_ms = result.timings_ms
        self.stats.record_frame(
            done - received, t2 - t0,
            {"wait": (started - received) + (t0 - decoded_at), "decode": decoded_at - started, "engine": t1 - t0,
             "features": engine_ms.get("features", 0.0) / 1e3, "search": engine_ms.get("search", 0.0) / 1e3,
             "maps": engine_ms.get("maps", 0.0) / 1e3, "overlay": t2 - t1, "publish": done - t2},
        )
        return messages

    @staticmethod
    def _score(monitor: Monitor, rgb: Any, scale: float) -> Any:
        """Score ``rgb`` with ``monitor.process``; the caller holds the engine lock.

        On a frame shrunk by ``scale`` the area filter is scaled with it, so min_component_area_px
        keeps meaning pixels of the input frame.
        """
        if scale >= 1.0:
            return monitor.process(rgb)
        area = monitor.config.min_component_area_px
        monitor.config.min_component_area_px = int(round(area * scale * scale))
        try:
            return monitor.process(rgb)
        finally:
            monitor.config.min_component_area_px = area

    def _bad_message(self, reason: str) -> None:
        self.stats.record_error(f"bad message on {self._input_topic}: {reason}", bad_message=True)
        self.get_logger().warning(
            f"skipping a bad message on {self._input_topic} ({self.stats.bad_messages} so far): {reason}",
            throttle_duration_sec=5.0,
        )

    # -- parameters ---------------------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in SPECS_BY_NAME}
        configured = self.lifecycle_state in ("inactive", "active")
        for name, value in changes.items():
            spec = SPECS_BY_NAME[name]
            reason = check_choice(name, value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if spec.when == CONFIGURE and configured:
                return SetParametersResult(
                    successful=False,
                    reason=f"{name} is applied at configure (it reloads the model or the bank): deactivate and "
                    f"cleanup the node, set it, then configure again",
                )
        try:
            self._validate_runtime(changes)
            if configured:
                self._apply_runtime(changes)
        except (ConfigError, SemanomError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if "publish_overlay" in changes:
            self._publish_overlay = bool(changes["publish_overlay"])
        if "publish_score_map" in changes:
            self._publish_score_map = bool(changes["publish_score_map"])
        if "drop_warn_fraction" in changes:
            self._drop_warn_fraction = float(changes["drop_warn_fraction"])
        self._max_input_pixels = int(changes.get("max_input_pixels", self._max_input_pixels))
        self._max_output_pixels = int(changes.get("max_output_pixels", self._max_output_pixels))
        self._stall_timeout_s = float(changes.get("stall_timeout_s", self._stall_timeout_s))
        self._min_rate_fraction = float(changes.get("min_rate_fraction", self._min_rate_fraction))
        for name in changes:  # a start-up value that was refused is now replaced by an accepted one
            self._startup_errors.pop(name, None)
        return SetParametersResult(successful=True)

    @staticmethod
    def _validate_runtime(changes: dict[str, Any]) -> None:
        """Range checks the descriptors cannot express (e.g. alpha in the open interval (0, 1))."""
        fields = {}
        for name, value in changes.items():
            spec = SPECS_BY_NAME[name]
            if spec.when == RUNTIME and spec.config_field:
                fields[name] = spec.to_config(value)
        if fields:
            PipelineConfig().replace(**fields)

    def _apply_runtime(self, changes: dict[str, Any]) -> None:
        """Apply live changes to the monitor; raises (and changes nothing) when one is refused."""
        engine = self._engine
        if engine is None:
            return
        if not engine.lock.acquire(timeout=ENGINE_LOCK_TIMEOUT_S):
            raise SemanomError(
                f"a frame has held the engine for more than {ENGINE_LOCK_TIMEOUT_S:g} s (see /diagnostics); "
                "try again when it is done"
            )
        try:
            monitor = engine.monitor
            threshold = changes.get("threshold", self._param("threshold"))
            alpha = changes.get("alpha", self._param("alpha"))
            if "threshold" in changes or "alpha" in changes:
                if threshold >= 0:
                    monitor.set_threshold(float(threshold))
                    monitor.config.alpha = float(alpha)
                else:
                    monitor.set_alpha(float(alpha))  # raises before changing anything when it cannot
            if "min_component_area_px" in changes:
                monitor.config.min_component_area_px = int(changes["min_component_area_px"])
            if "overlay_alpha" in changes:
                monitor.config.overlay_alpha = float(changes["overlay_alpha"])
            if "nominal_prompts" in changes or "anomaly_prompts" in changes:
                nominal = changes.get("nominal_prompts", self._param("nominal_prompts"))
                anomaly = changes.get("anomaly_prompts", self._param("anomaly_prompts"))
                monitor.set_prompts(list(nominal or []), list(anomaly or []))  # re-embeds; raises on bad prompts
            if "prompt_fusion_weight" in changes:
                monitor.set_prompt_fusion_weight(float(changes["prompt_fusion_weight"]))
        finally:
            engine.lock.release()
        if "threshold" in changes or "alpha" in changes:
            self.get_logger().info(f"threshold is now {monitor.threshold:.4f}")

    # -- diagnostics --------------------------------------------------------------------------------------
    def _reset_diag_timer(self) -> None:
        period = float(self._param("diagnostics_period_s"))
        if abs(period - self._diag_period) > 1e-9:
            self.destroy_timer(self._diag_timer)
            self._diag_period = period
            self._diag_timer = self.create_timer(period, self.publish_diagnostics, callback_group=self._diag_group)

    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's DiagnosticStatus now (level, message, key/values)."""
        return self._diagnostics.status(
            name=f"semanom: {self.get_fully_qualified_name()}", state=self.lifecycle_state,
            transition_error=self._transition_error, input_topic=self._input_topic, device=self._device,
            drop_warn_fraction=self._drop_warn_fraction, monitor=self._monitor,
            busy_since=self._worker.busy_since, stall_timeout_s=self._stall_timeout_s,
            min_rate_fraction=self._min_rate_fraction,
        )

    def publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self.diagnostic_status(), *self._out.statuses(self.get_fully_qualified_name(), self._device)]
        self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run semanom_ros monitor_node``: spin until Ctrl-C, then shut down cleanly."""
    apply_large_image_profile()  # before rclpy.init: best-effort subscribers get whole big images
    rclpy.init(args=args)
    node = None
    # Measured on the 30 Hz benchmark: with a SingleThreadedExecutor the subscription was served far
    # less often while the worker ran (18 of 600 frames taken vs 134), so frames waited longer.
    executor = MultiThreadedExecutor()
    try:
        node = MonitorNode()
        executor.add_node(node)
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
