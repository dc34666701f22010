#!/bin/sh
# First run of the compose stack: write SESSION_SECRET into .env once.
#
#   deploy/env-init.sh [FILE]     # FILE defaults to .env beside docker-compose.yml
#
# Compose reads .env by itself, so every later `docker compose up`, `--scale` or
# restart uses the same secret and logins survive. An existing secret is never
# replaced: rotating it logs every customer out, so that stays a deliberate edit.
set -eu

file=${1:-$(dirname "$0")/../.env}
if [ -f "$file" ] && grep -q '^SESSION_SECRET=.' "$file"; then
    echo "$file already holds SESSION_SECRET; keeping it"
    exit 0
fi
umask 077
# Appending: a last line without its newline would swallow ours.
if [ -s "$file" ] && [ -n "$(tail -c1 "$file")" ]; then echo >> "$file"; fi
# 32 random bytes as 64 hex characters, from the kernel; no openssl needed.
secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
[ ${#secret} -eq 64 ] || { echo "could not read /dev/urandom" >&2; exit 1; }
printf 'SESSION_SECRET=%s\n' "$secret" >> "$file"
chmod 600 "$file"
echo "wrote a new SESSION_SECRET to $file (owner-only); keep this file, it is not in git"
