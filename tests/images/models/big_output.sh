# Writes OUTPUT_MB megabytes (default 1024) of incompressible data to /output.
head -c "$(( ${OUTPUT_MB:-1024} * 1024 * 1024 ))" /dev/urandom > /output/big.bin
