"""Library code both front ends use (the nodes in :mod:`semanom_ros.nodes`, the command-line tools in
:mod:`semanom_ros.tools`): settings, bank building and maintenance, evaluation and reports, replay.
No rclpy node code and no argparse here."""
