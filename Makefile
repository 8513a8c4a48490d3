# kproxy developer targets. `make run` starts the local cluster in .data/
# (primary 15432, replica 15433, Redis 16379) and kproxy on 6432.

.PHONY: build run stop test

build:
	go build -o bin/kproxy ./cmd/kproxy

run:
	scripts/deps
	scripts/pgcluster start .data
	$(MAKE) --no-print-directory build
	@echo 'connect with: psql "host=127.0.0.1 port=6432 user=postgres dbname=postgres"'
	bin/kproxy serve --primary 127.0.0.1:15432 --replica 127.0.0.1:15433

stop:
	scripts/pgcluster stop .data

test:
	scripts/deps
	scripts/test
