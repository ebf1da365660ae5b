#!/bin/sh
# A stand-in for ssh that "logs in" to an emulated host (see emulate.py): it runs the
# command in the host's network namespace, with the host's own /etc/hosts and /dev/shm (a
# private mount namespace: MPI's shared-memory segments go when the host's processes do) and
# hostname (a private UTS namespace). Called like ssh:
# fake_ssh.sh [-x] [-o opt] HOST COMMAND...; the command words are joined with spaces and
# given to sh -c, as sshd gives them to the login shell. $HPCL_EMULATED_HOSTS_DIR holds
# HOST.pid (the namespace's holder) and HOST.hosts.
while [ $# -gt 0 ]; do
    case "$1" in
        -o|-p|-l|-i|-F) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1
shift
dir=${HPCL_EMULATED_HOSTS_DIR:?fake_ssh.sh: HPCL_EMULATED_HOSTS_DIR is not set (see emulate.py)}
[ -r "$dir/$host.pid" ] || { echo "fake_ssh.sh: no emulated host $host" >&2; exit 255; }
[ -n "$HPCL_FAKE_SSH_LOG" ] && echo "$host $*" >>"$HPCL_FAKE_SSH_LOG"
exec nsenter -t "$(cat "$dir/$host.pid")" -n \
    unshare --mount --uts --propagation private /bin/sh -c \
    'mount -n --bind "$0" /etc/hosts && mount -n -t tmpfs tmpfs /dev/shm &&
     hostname "$1" && exec /bin/sh -c "$2"' \
    "$dir/$host.hosts" "$host" "$*"
