# Reports the sandbox it runs in: user, limits, /tmp, GPU visibility, and what it finds at /input and /output.
id -u > /output/uid.txt
id -g > /output/gid.txt
ulimit -c > /output/core.txt
ulimit -n > /output/nofile.txt
grep ' /tmp ' /proc/mounts > /output/tmp-mount.txt
echo "${NVIDIA_VISIBLE_DEVICES-unset}" > /output/nvidia.txt
ls -a /input > /output/input-listing.txt
echo "wrote to /tmp" > /tmp/probe && cat /tmp/probe > /output/tmp-write.txt
