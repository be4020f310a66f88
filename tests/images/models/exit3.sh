# Fails with exit code 3 and a message on stderr.
echo "starting up"
echo "error: no DICOM series found in /input" >&2
exit 3
