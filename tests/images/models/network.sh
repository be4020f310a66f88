# Reports which network interfaces it has and whether it could open a connection.
cat /proc/net/dev > /output/netdev.txt
if wget -q -T 3 -O /output/page.html http://1.1.1.1/ 2>/output/wget-error.txt; then echo reached; else echo unreachable; fi > /output/network.txt
