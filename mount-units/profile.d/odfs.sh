# odfs: on-demand binaries. Appended LAST so installed tools always win and
# the mount only answers for what the machine lacks.
case ":${PATH}:" in
  *:/opt/od/bin:*) ;;
  *) PATH="${PATH:+${PATH}:}/opt/od/bin"; export PATH ;;
esac
