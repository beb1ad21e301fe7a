"""Plain-text paragraphs of the Wikipedia articles that gensim (PyPI) ships as test data:
the first 98 articles of an English Wikipedia dump (CC BY-SA), markup removed with gensim's
own `filter_wiki`. Articles alternate between two uses, so that no text calibrates what it
later measures: even-numbered ones give the int8 calibration set, odd-numbered ones the
retrieval set of `scripts/quantization-recall`."""

import bz2
import re
from importlib.resources import files

from gensim.corpora.wikicorpus import extract_pages, filter_wiki

DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def articles():
    """(title, paragraphs of at least 30 words) of every article that is not a redirect."""
    found = []
    with bz2.open(files("gensim") / DUMP) as dump:
        for title, text, _ in extract_pages(dump):
            if text.lower().startswith("#redirect"):
                continue
            paragraphs = []
            for paragraph in filter_wiki(text).split("\n"):
                paragraph = re.sub(r"'{2,}", "", re.sub(r"\s+", " ", paragraph)).strip()
                if len(paragraph.split()) >= 30 and not paragraph.startswith(("*", "|", "!", "{", "=")):
                    paragraphs.append(paragraph)
            if paragraphs:
                found.append((title, paragraphs))
    return found


def sentences(paragraph):
    """The paragraph's sentences, split after `.`, `!` or `?` and a space before a capital."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph) if s.strip()]
