# Sourced: gensim from PyPI (its wheel ships the Wikipedia articles scripts/lib/wiki_passages.py
# reads) in target/tools/gensim-venv; sets `gensim_python`.
gensim_venv="target/tools/gensim-venv"
gensim_python="$gensim_venv/bin/python"
if ! "$gensim_python" -c 'import gensim' 2>/dev/null; then
  python3 -m venv "$gensim_venv"
  "$gensim_python" -m pip install --quiet --disable-pip-version-check gensim==4.4.0
fi
