# Copies the input into a nested output tree, adds an empty folder and an executable file.
set -e
mkdir -p /output/nested/deeper /output/empty
cp -r /input/. /output/nested/deeper/
echo "#!/bin/sh" > /output/run-me.sh
chmod 750 /output/run-me.sh
echo "copied $(ls /input | wc -l) entries"
