#!/usr/bin/env bash
# Entrypoint of the postgres stand-in: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB (and their _FILE forms),
# POSTGRES_HOST_AUTH_METHOD, POSTGRES_INITDB_ARGS and /docker-entrypoint-initdb.d, as in the official image.
# The data folder ($PGDATA) is initialised on the first start only.
set -Eeuo pipefail

die() { echo "postgres entrypoint: error: $*" >&2; exit 1; }

# VAR or VAR_FILE (a secret's path), never both.
file_env() {
    local var="$1" default="${2:-}" file_var="${1}_FILE" value
    if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
        die "both $var and $file_var are set (they are exclusive)"
    fi
    value="$default"
    if [[ -n "${!var:-}" ]]; then
        value="${!var}"
    elif [[ -n "${!file_var:-}" ]]; then
        [[ -r "${!file_var}" ]] || die "$file_var names '${!file_var}', which cannot be read"
        value="$(<"${!file_var}")"
    fi
    export "$var"="$value"
    unset "$file_var"
}

init_database() {
    file_env POSTGRES_USER postgres
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_DB "$POSTGRES_USER"
    local auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [[ -z "$POSTGRES_PASSWORD" && "$auth" != trust ]]; then
        die "the database is not initialised and POSTGRES_PASSWORD is empty: set POSTGRES_PASSWORD" \
            "(or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without a password)"
    fi
    echo "postgres entrypoint: initialising $PGDATA for user '$POSTGRES_USER', database '$POSTGRES_DB'"
    local -a pwfile=()
    local pwpath=""
    if [[ -n "$POSTGRES_PASSWORD" ]]; then
        pwpath="$(mktemp)"  # mode 0600, owned by postgres
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwpath"
        pwfile=(--pwfile="$pwpath")
    fi
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of arguments, like in the official image
    initdb --username="$POSTGRES_USER" "${pwfile[@]}" --auth-local=trust --auth-host="$auth" \
        --encoding=UTF8 --locale=C.UTF-8 ${POSTGRES_INITDB_ARGS:-} >/dev/null
    [[ -z "$pwpath" ]] || rm -f "$pwpath"
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    # A server reachable only on its socket while the database and the init scripts are set up.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >/dev/null
    local -a psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres)
    if [[ "$POSTGRES_DB" != postgres ]]; then
        "${psql[@]}" -q --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    local f
    # shellcheck disable=SC1090  # init scripts are the user's, found at run time
    for f in /docker-entrypoint-initdb.d/*; do
        [[ -e "$f" ]] || continue
        case "$f" in
            *.sh) echo "postgres entrypoint: running $f"; if [[ -x "$f" ]]; then "$f"; else source "$f"; fi ;;
            *.sql) echo "postgres entrypoint: running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) echo "postgres entrypoint: running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
            *) echo "postgres entrypoint: ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres entrypoint: initialisation done"
}

# `docker run image -c max_connections=200`: options go to postgres.
if [[ "${1:-}" == -* ]]; then
    set -- postgres "$@"
fi

if [[ "${1:-}" == postgres ]]; then
    if [[ "$(id -u)" == 0 ]]; then
        # The data volume may arrive owned by root: hand it to postgres, then run this script again as postgres.
        mkdir -p "$PGDATA"
        chown postgres:postgres "$PGDATA"
        chmod 0700 "$PGDATA"
        install -d -o postgres -g postgres -m 3777 /var/run/postgresql
        exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
        init_database
    fi
    unset POSTGRES_PASSWORD
fi

exec "$@"
