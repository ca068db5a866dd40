#!/bin/sh
# The argument handling of upstream docker:dind's dockerd-entrypoint.sh (with DOCKER_TLS_CERTDIR
# empty, as the workflow sets it): no arguments, or a flag first, and it PREPENDS its own
# listeners (--host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2375); "dockerd" first and
# the arguments are used as given.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- dockerd --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2375 "$@"
fi
if [ "$1" = dockerd ]; then
  find /run /var/run -iname 'docker*.pid' -delete 2>/dev/null || :
  mount --make-rshared / 2>/dev/null || :
fi
exec "$@"
