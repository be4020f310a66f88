# Tries to write into /input and /model; reports each attempt's exit status and its capabilities.
touch /input/intruder 2>/output/input-error.txt; echo $? > /output/input-rc.txt
touch /model/intruder 2>/output/model-error.txt; echo $? > /output/model-rc.txt
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > /output/status.txt
id -u > /output/uid.txt
