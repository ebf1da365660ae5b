#!/bin/sh
# A stand-in for ssh that "logs in" to an emulated host (see emulate.py): it runs the
# command in the host's network namespace with the host's own hostname (UTS namespace).
# Called like ssh: fake_ssh.sh [-x] [-o opt] HOST COMMAND...; the command words are
# joined with spaces and given to sh -c, as sshd gives them to the login shell.
while [ $# -gt 0 ]; do
    case "$1" in
        -o|-p|-l|-i|-F) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1
shift
[ -n "$HPCL_FAKE_SSH_LOG" ] && echo "$host $*" >>"$HPCL_FAKE_SSH_LOG"
exec ip netns exec "hpcl-$host" unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$host" "$*"
