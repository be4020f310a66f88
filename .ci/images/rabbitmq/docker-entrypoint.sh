#!/usr/bin/env bash
# Entrypoint of the rabbitmq stand-in: RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS / RABBITMQ_DEFAULT_VHOST become
# the default user and vhost (created on the first start of an empty data volume, as with the official image); extra
# configuration is read from /etc/rabbitmq/rabbitmq.conf and /etc/rabbitmq/conf.d/*.conf.
set -euo pipefail

die() { echo "rabbitmq entrypoint: error: $*" >&2; exit 1; }

ENV_CONF=/etc/rabbitmq/conf.d/05-environment.conf

# One `key = value` line; a value that the config parser would misread is refused rather than silently mangled.
conf_line() {
    local key="$1" value="$2"
    [[ "$value" != *$'\n'* && "$value" != *'#'* && -n "${value// /}" ]] \
        || die "$3 must be a non-empty single line without '#': got ${value@Q}"
    printf '%s = %s\n' "$key" "$value"
}

write_env_conf() {
    local lines=""
    [[ -n "${RABBITMQ_DEFAULT_USER:-}" ]] && lines+="$(conf_line default_user "$RABBITMQ_DEFAULT_USER" RABBITMQ_DEFAULT_USER)"$'\n'
    [[ -n "${RABBITMQ_DEFAULT_PASS:-}" ]] && lines+="$(conf_line default_pass "$RABBITMQ_DEFAULT_PASS" RABBITMQ_DEFAULT_PASS)"$'\n'
    [[ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]] && lines+="$(conf_line default_vhost "$RABBITMQ_DEFAULT_VHOST" RABBITMQ_DEFAULT_VHOST)"$'\n'
    if [[ -z "$lines" ]]; then
        rm -f "$ENV_CONF" 2>/dev/null || true
        return
    fi
    if [[ -n "${RABBITMQ_DEFAULT_USER:-}" && -z "${RABBITMQ_DEFAULT_PASS:-}" ]]; then
        die "RABBITMQ_DEFAULT_USER is set but RABBITMQ_DEFAULT_PASS is empty"
    fi
    { printf '# Written at start-up from the RABBITMQ_DEFAULT_* environment variables.\n'; printf '%s' "$lines"; } \
        >"$ENV_CONF" 2>/dev/null \
        || die "cannot write $ENV_CONF (is /etc/rabbitmq/conf.d mounted read-only? mount single files instead)"
    chown rabbitmq:rabbitmq "$ENV_CONF"
    chmod 0600 "$ENV_CONF"
}

if [[ "${1:-}" == -* ]]; then
    set -- rabbitmq-server "$@"
fi

if [[ "${1:-}" == rabbitmq-server ]]; then
    shift
    if [[ "$(id -u)" == 0 ]]; then
        write_env_conf
        # The data volume may arrive owned by root.
        find /var/lib/rabbitmq /var/log/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
    fi
    exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi

exec "$@"
