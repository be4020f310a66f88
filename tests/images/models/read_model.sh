# Reads static content from /model.
set -e
cat /model/weights.txt > /output/weights-seen.txt
ls -R /model > /output/model-listing.txt
