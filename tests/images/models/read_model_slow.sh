# Reads /model at its start and again 4 seconds later (long enough to change the model while it runs).
set -e
cat /model/weights.txt > /output/weights-start.txt
sleep 4
cat /model/weights.txt > /output/weights-end.txt
