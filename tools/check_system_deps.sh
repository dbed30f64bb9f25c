#!/usr/bin/env bash
# open3d needs Debian's libusb-1.0-0. Install it when we are root; otherwise print the command and stop.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian package libusb-1.0-0 (needed by open3d)"
  apt-get update -qq && apt-get install -y -qq libusb-1.0-0
else
  echo "open3d needs the system library libusb-1.0-0. Run:  sudo apt-get install -y libusb-1.0-0  then run make again." >&2
  exit 1
fi
