"""semanom_ros: semantic anomaly detection for ROS 2 cameras (DINOv2 embeddings vs a nominal bank)."""

__version__ = "0.1.0"
