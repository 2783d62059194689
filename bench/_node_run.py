"""Helpers of the benchmarks that run monitor_node in a child process and talk to it over DDS."""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any


def wait_for_node(pub: Any, sub: Any, node_proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Wait until the node subscribes to ``pub``'s topic and publishes on ``sub``'s (exit if it dies)."""
    deadline = time.monotonic() + timeout
    while not (pub.get_subscription_count() and sub.get_publisher_count()):
        if node_proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("monitor_node did not come up (see its log above)")
        time.sleep(0.1)


def stop_node(node_proc: subprocess.Popen, executor: Any, probe: Any, context: Any) -> None:
    """Ctrl-C the node (its clean shutdown path; killed after 30 s), then close this side's probe."""
    node_proc.send_signal(2)  # SIGINT
    try:
        node_proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node_proc.kill()
    executor.shutdown()
    probe.destroy_node()
    import rclpy

    rclpy.shutdown(context=context)


def start_probe(name: str, domain: int) -> tuple[Any, Any]:
    """This side's rclpy context (on ``domain``) and node, to publish frames and collect outputs."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    context = Context()
    rclpy.init(context=context, domain_id=domain)
    return context, Node(name, context=context)
