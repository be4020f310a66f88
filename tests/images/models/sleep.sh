# Sleeps for SLEEP_SECONDS (default 600): past any test timeout.
echo "sleeping"
sleep "${SLEEP_SECONDS:-600}"
echo "done" > /output/done.txt
