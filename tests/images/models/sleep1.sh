# A one-second task (for the makespan benchmark and the two-consumer test).
sleep 1
echo "$HOSTNAME" > /output/ran-on.txt
