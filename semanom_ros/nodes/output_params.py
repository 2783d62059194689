"""The monitor's output-side parameters (QoS, heat map and JPEG, alarm debounce, anomaly clips).

Plain field dicts for :class:`semanom_ros.nodes.params.ParamSpec` (``params.py`` turns them into
specs, so this module does not import it); ``when`` is "runtime" (applied live) or "configure".
"""
from __future__ import annotations

from typing import Any

__all__ = ["CLIP_TOPIC_CHOICES", "OUTPUT_PARAM_FIELDS"]

# What a clip can hold: the input frame, any output key, the alarm events.
CLIP_TOPIC_CHOICES: tuple[str, ...] = (
    "input", "score_map", "heatmap", "overlay", "overlay/compressed", "instances/labels", "instances", "score",
    "is_anomalous", "events",
)

OUTPUT_PARAM_FIELDS: tuple[dict[str, Any], ...] = (
    dict(name="output_reliability", default="reliable", choices=("reliable", "best_effort"),
         description="QoS reliability of every output topic. 'reliable' serves reliable and best-effort "
         "subscribers (RViz's Image display default is reliable); 'best_effort' never retransmits."),
    dict(name="output_depth", default=5, int_range=(1, 100),
         description="QoS history depth (keep last) of every output topic: frames a slow reliable "
         "subscriber may lag behind before one is replaced (depth 1 lost ~17 % of 1.5 MB overlays at 30 Hz)."),
    dict(name="max_published_pixels", default=0, int_range=(0, 2**31 - 1), when="runtime",
         description="Output images (score map, heat map, overlay, labels) shrunk, aspect kept, to at most this "
         "many pixels (e.g. 307200 = 640x480) to bound the bandwidth; 0 = the input's resolution. Detections "
         "stay in input pixels."),
    dict(name="jpeg_quality", default=80, int_range=(1, 100), when="runtime",
         description="JPEG quality of ~/overlay/compressed."),
    dict(name="alarm_onset_frames", default=3, int_range=(1, 1000),
         description="The alarm (~/events onset) rises when at least this many of the last alarm_window frames "
         "are anomalous; must be <= alarm_window."),
    dict(name="alarm_window", default=5, int_range=(1, 1000),
         description="Frames looked back on for the alarm onset (1 with onset and release 1 = the raw flag)."),
    dict(name="alarm_release_frames", default=5, int_range=(1, 100000),
         description="The alarm clears (~/events offset) after this many nominal frames in a row."),
    dict(name="decode_ahead", default=True,
         description="Decode the next frame on a second thread while the worker processes the current one "
         "(saves the decode time per frame; on a CPU-bound machine it also decodes frames that are then "
         "dropped: false decodes only the frame the worker takes)."),
    dict(name="clip_dir", default="",
         description="Folder for anomaly clips (rosbag2 MCAP around every alarm onset, named by its stamp); "
         "'' = no clips."),
    dict(name="clip_pre_s", default=5.0, float_range=(0.0, 600.0),
         description="Seconds of messages before the onset in a clip (kept in a ring buffer in memory)."),
    dict(name="clip_post_s", default=5.0, float_range=(0.0, 600.0),
         description="Seconds after the onset in a clip (another onset within them extends the clip)."),
    dict(name="clip_quota_mb", default=2048, int_range=(1, 10**7),
         description="Disk quota of clip_dir's clips in MB: the oldest clips are deleted to stay under it."),
    dict(name="clip_buffer_mb", default=256, int_range=(1, 10**6),
         description="Memory bound of the ring buffer in MB (and again of messages waiting for the disk)."),
    dict(name="clip_topics", default=["input", "overlay/compressed", "instances", "score", "is_anomalous", "events"],
         description="What a clip holds: 'input' (the camera messages as received) and output keys of "
         f"{', '.join(CLIP_TOPIC_CHOICES[1:])}. Raw images cost memory: 2 s of 960x540 rgb8 at 30 Hz is 93 MB."),
)
