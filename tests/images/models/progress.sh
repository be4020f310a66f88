# Writes how far it is to $PROGRESS_FILE (a fraction, then a percentage, then an appended last line), a few seconds
# at each step, and its result to /output.
echo "progress file: $PROGRESS_FILE"
echo "0.25 reading input" > "$PROGRESS_FILE"
sleep "${STEP_SECONDS:-3}"
echo "50% segmenting" > "$PROGRESS_FILE"
sleep "${STEP_SECONDS:-3}"
echo "from the progress model" > /output/result.txt
echo "1 done" >> "$PROGRESS_FILE"
