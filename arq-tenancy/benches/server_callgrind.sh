#!/usr/bin/env bash
# Server-side cost of a tenant transaction, in instructions per operation (callgrind counts
# instructions, so the figures repeat on a loaded machine where timings do not).
#
# Starts a throwaway PostgreSQL cluster under `valgrind --tool=callgrind --trace-children=yes`
# (every backend gets its own profile), creates arq's tenant function, an RLS table and two
# tables without RLS, then runs each pgbench script twice (N1 and N2 operations on one
# connection) and reports (instructions(N2) - instructions(N1)) / (N2 - N1): the cost of one
# operation without the connection's start-up. Needs valgrind, pgbench and PostgreSQL's server
# binaries (Debian: postgresql); run as root or as the postgres user.
#
#   arq-tenancy/benches/server_callgrind.sh            # N1=1000 N2=3000, about 10 minutes
set -euo pipefail
N1=${N1:-1000}
N2=${N2:-3000}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=$(mktemp -d /tmp/arq-pg-callgrind.XXXXXX)
port=${PORT:-5499}
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
as_pg "$bin/initdb -D $dir/data -A trust -U postgres >/dev/null"
as_pg "valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=$dir/cg.%p \
  $bin/postgres -D $dir/data -p $port -k $dir -c listen_addresses= -c autovacuum=off \
  >$dir/server.log 2>&1 &"
stop() { as_pg "$bin/pg_ctl -D $dir/data -m fast stop >/dev/null 2>&1" || true; }
trap stop EXIT
for _ in $(seq 1 120); do psql -h "$dir" -p "$port" -U postgres -Atc 'select 1' postgres >/dev/null 2>&1 && break; sleep 1; done
repo=$(cd "$(dirname "$0")/../.." && pwd)
psql -q -h "$dir" -p "$port" -U postgres postgres <<SQL >/dev/null
CREATE ROLE arq_app LOGIN;
$(cat "$repo/arq-tenancy/migrations/20250101000000_arq_tenancy_support.sql")
CREATE TABLE items (tenant_id uuid NOT NULL, id bigint NOT NULL, payload text NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE items_norls (tenant_id uuid NOT NULL, id bigint NOT NULL, payload text NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE plain_items (id bigint PRIMARY KEY, owner uuid NOT NULL, payload text NOT NULL);
INSERT INTO items_norls SELECT ('00000000-0000-0000-0000-00000000000'||t)::uuid, g, md5(g::text)
  FROM generate_series(0,9) t, generate_series(1,10000) g;
INSERT INTO items SELECT * FROM items_norls;
INSERT INTO plain_items SELECT t*10000+g, ('00000000-0000-0000-0000-00000000000'||t)::uuid, md5(g::text)
  FROM generate_series(0,9) t, generate_series(1,10000) g;
SELECT arq.enable_tenant_rls('items', 'arq_app');
GRANT SELECT ON items_norls, plain_items TO arq_app;
GRANT USAGE ON SCHEMA arq TO arq_app;
ANALYZE;
SQL
t="'00000000-0000-0000-0000-000000000003'"
w="$dir/scripts"; mkdir -p "$w"
printf '\\set id random(1, 10000)\nSELECT payload FROM plain_items WHERE id = :id + 30000;\n' >"$w/select_plain.sql"
printf '\\set id random(1, 10000)\nSELECT payload FROM items WHERE id = :id;\n' >"$w/select_rls.sql"
printf '\\set id random(1, 10000)\nSELECT payload FROM items_norls WHERE tenant_id = %s AND id = :id;\n' "$t" >"$w/select_literal_tenant.sql"
printf '\\set id random(1, 10000)\nSELECT payload FROM items_norls WHERE tenant_id = arq.current_tenant_id() AND id = :id;\n' >"$w/select_runtime_tenant.sql"
printf 'BEGIN;\nCOMMIT;\n' >"$w/begin_commit.sql"
printf 'BEGIN \\; SET LOCAL app.tenant_id = %s;\nCOMMIT;\n' "$t" >"$w/begin_set_local_commit.sql"
export PGOPTIONS="-c app.tenant_id=00000000-0000-0000-0000-000000000003"
count() { # script mode n -> instructions of the backend that served it
  local before after f
  before=$(ls "$dir"/cg.* | sort)
  pgbench -h "$dir" -p "$port" -U arq_app -n -M "$2" -t "$3" -c 1 -f "$w/$1.sql" postgres >/dev/null
  sleep 2
  after=$(ls "$dir"/cg.* | sort)
  f=$(comm -13 <(echo "$before") <(echo "$after") | tail -1)
  grep -m1 '^summary' "$f" | awk '{print $2}'
}
printf '%-24s %-9s %14s\n' script protocol "instr/op"
for s in select_plain select_rls select_literal_tenant select_runtime_tenant; do
  a=$(count $s prepared "$N1"); b=$(count $s prepared "$N2")
  printf '%-24s %-9s %14d\n' $s prepared $(( (b - a) / (N2 - N1) ))
done
for s in begin_commit begin_set_local_commit; do
  a=$(count $s simple "$N1"); b=$(count $s simple "$N2")
  printf '%-24s %-9s %14d\n' $s simple $(( (b - a) / (N2 - N1) ))
done
