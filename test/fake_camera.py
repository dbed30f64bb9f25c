"""A stand-in camera driver for test_ros_large_images.py: its own process, publishing rgb8 images with
sensor-data QoS, as a real camera driver does.  Set FASTDDS_DEFAULT_PROFILES_FILE in its environment
(what the README tells camera-driver users) to give it the shipped shared-memory profile.

    python test/fake_camera.py --namespace /ns --sizes 1241x376,1920x1200 --rate 10 --warmup 10 --count 40

Waits for a subscriber, then per size: ``warmup`` images, a ``gap`` (2 s), ``count`` measured images, a
pause.  Header stamps: sec = 100 * (size index + 1) + (0 warm-up | 1 measured), nanosec = image index.
Prints one JSON line per size (monotonic times of the warm-up's end and of the measured images:
CLOCK_MONOTONIC is host-wide).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _image(width: int, height: int):
    import numpy as np
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.frame_id = "camera"
    msg.width, msg.height, msg.encoding, msg.step = width, height, "rgb8", 3 * width
    rng = np.random.default_rng(width)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    msg.data = np.repeat(np.repeat(small, 8, 0), 8, 1)[:height, :width].tobytes()
    return msg


def _send(pub, msg, sec: int, n: int, period: float) -> tuple[float, float]:
    t0 = time.monotonic()
    for i in range(n):
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, i
        pub.publish(msg)
        time.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
    return t0, time.monotonic()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--topic", default="camera/image_raw")
    ap.add_argument("--sizes", default="1241x376,1920x1200")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--gap", type=float, default=2.0)
    ap.add_argument("--pause", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=60.0)
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("fake_camera", namespace=args.namespace)
    pub = node.create_publisher(Image, args.topic, qos_profile_sensor_data)
    deadline = time.monotonic() + args.wait
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    if pub.get_subscription_count() < 1:
        print(json.dumps({"error": "no subscriber"}), flush=True)
        return 1
    period = 1.0 / args.rate
    for k, size in enumerate(args.sizes.split(",")):
        width, height = (int(v) for v in size.split("x"))
        msg = _image(width, height)
        _, warm_end = _send(pub, msg, 100 * (k + 1), args.warmup, period)
        time.sleep(args.gap)
        t0, t1 = _send(pub, msg, 100 * (k + 1) + 1, args.count, period)
        phase = {"size": size, "sec": 100 * (k + 1) + 1, "sent": args.count, "warm_end": warm_end, "t0": t0, "t1": t1}
        print(json.dumps(phase), flush=True)
        time.sleep(args.pause)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
