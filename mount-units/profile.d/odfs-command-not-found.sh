# odfs: when a command is not found, say whether an image on this machine
# (or the odfs catalog) provides it, and how to use it. For bash (sourced
# from /etc/profile.d) and zsh (source it from ~/.zshrc). Offline and
# instant: it asks the local odfs daemon, which answers from its index
# within a second or not at all (ODFS_SOCKET picks another mount's daemon).
if [ -n "${BASH_VERSION-}${ZSH_VERSION-}" ] && __odfs_bin=$(command -v odfs 2>/dev/null); then
  __odfs_not_found() {
    "$__odfs_bin" hint -- "$1"
    printf '%s: command not found\n' "$1" >&2
    return 127
  }
  command_not_found_handle() { __odfs_not_found "$@"; }   # bash
  command_not_found_handler() { __odfs_not_found "$@"; }  # zsh
fi
