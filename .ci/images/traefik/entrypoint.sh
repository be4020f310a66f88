#!/bin/sh
# Same behaviour as the official traefik image's entrypoint.
set -e

# First argument is an option (`--providers.docker`): run traefik with the given arguments.
if [ "${1#-}" != "$1" ]; then
    set -- traefik "$@"
fi

# A Traefik subcommand (`version`, `healthcheck`): run it through traefik; anything else runs as given.
if traefik "$1" --help >/dev/null 2>&1; then
    set -- traefik "$@"
else
    echo "= '$1' is not a Traefik command: assuming shell execution." 1>&2
fi

exec "$@"
