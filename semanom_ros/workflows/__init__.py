"""Library code both front ends use: settings, bank building and maintenance, evaluation and reports, replay.

The front ends are the nodes in :mod:`semanom_ros.nodes` and the command-line tools in
:mod:`semanom_ros.tools`. No rclpy node code and no argparse here.
"""
