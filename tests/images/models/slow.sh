# Works for 6 seconds, then writes its result (long enough to interrupt it).
echo "working"
sleep 6
echo "ok" > /output/ok.txt
