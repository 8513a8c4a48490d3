"""psycopg 3 through a transaction pooler: statements prepared inside a
transaction that an exception rolls back must still work in the next one.

Usage: python3 psycopg_rollback.py DSN TABLE THREADS
Each thread has its own autocommit connection with prepare_threshold=2 and
runs rounds of explicit transactions (conn.transaction()), every other one
rolled back by an exception after its statements were prepared. Prints the
number of statements run and exits 0 when everything behaved as on
Postgres; raises otherwise.
"""
import sys
import threading

import psycopg

dsn, table, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
ROUNDS, PER_ROUND = 10, 5


class Rollback(Exception):
    pass


def client(n, errors, counts):
    try:
        ran = 0
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=2) as conn:
            for r in range(ROUNDS):
                try:
                    with conn.transaction():
                        for i in range(PER_ROUND):
                            key = (n * ROUNDS + r) * PER_ROUND + i
                            conn.execute(f"INSERT INTO {table} (id, client, name) VALUES (%s, %s, %s)", (key, n, "r%d" % r))
                            got = conn.execute(f"SELECT count(*) FROM {table} WHERE client = %s AND name = %s", (n, "r%d" % r)).fetchone()[0]
                            assert got == i + 1, (n, r, i, got)
                            ran += 2
                        if r % 2 == 0:
                            raise Rollback()
                except Rollback:
                    pass
                # Outside any transaction too, with the same statements.
                got = conn.execute(f"SELECT count(*) FROM {table} WHERE client = %s AND name = %s", (n, "r%d" % r)).fetchone()[0]
                want = 0 if r % 2 == 0 else PER_ROUND
                assert got == want, (n, r, got, want)
                ran += 1
            # The statements were prepared on the server (psycopg counts them).
            assert conn._prepared._names, "psycopg prepared nothing"
        counts[n] = ran
    except BaseException as e:  # reported by the main thread
        errors.append("client %d: %r" % (n, e))


with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, client int, name text)")
errors, counts = [], {}
ts = [threading.Thread(target=client, args=(n, errors, counts)) for n in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
if errors:
    raise SystemExit("\n".join(errors))
with psycopg.connect(dsn, autocommit=True) as conn:
    rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    assert rows == threads * (ROUNDS // 2) * PER_ROUND, rows
print(sum(counts.values()))
