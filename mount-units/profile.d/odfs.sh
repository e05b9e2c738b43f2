# odfs: on-demand binaries. Appended LAST so installed tools always win and
# the mount only answers for what the machine lacks.
case ":${PATH}:" in
  *:/opt/od/bin:*) ;;
  *) PATH="${PATH:+${PATH}:}/opt/od/bin"; export PATH ;;
esac
# Man pages and shell completions of the catalog's tools, served beside the
# mount: man finds /opt/od/share/man from the PATH entry itself; bash
# completion and fish look in XDG_DATA_DIRS (whose default is kept), zsh in
# fpath (zsh reads this from ~/.zshrc: `. /etc/profile.d/odfs.sh`).
case ":${XDG_DATA_DIRS:-/usr/local/share:/usr/share}:" in
  *:/opt/od/share:*) ;;
  *) XDG_DATA_DIRS="${XDG_DATA_DIRS:-/usr/local/share:/usr/share}:/opt/od/share"; export XDG_DATA_DIRS ;;
esac
if [ -n "${ZSH_VERSION-}" ]; then
  eval 'fpath+=(/opt/od/share/zsh/site-functions)'
fi
