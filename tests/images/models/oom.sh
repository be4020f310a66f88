# Allocates far past any small memory limit by holding a large string in the shell.
echo "allocating"
x=$(head -c 400000000 /dev/zero | tr '\0' a)
echo "${#x}" > /output/size.txt
