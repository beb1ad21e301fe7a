"""Fails on a broken link in the built book or in the repository's Markdown pages.

    python3 scripts/lib/check-links.py BOOK_DIR [PAGE.md ...]

In the book's HTML every relative href and src must name a file that exists and, with a
#fragment, an element with that id. In a Markdown page every relative link must name a file
or folder of the repository; a link into docs/src/*.md with a #fragment is checked against
the built page's ids. External links (http:, https:, mailto:) are not followed: CI has no
network to follow them with.
"""

import html.parser
import pathlib
import re
import sys
import urllib.parse


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append(attrs[name])


def external(link):
    return re.match(r"^[a-z][a-z0-9+.-]*:", link) is not None


def main(book, pages):
    parsed = {}

    def ids_of(path):
        if path not in parsed:
            page = Page()
            page.feed(path.read_text())
            parsed[path] = page
        return parsed[path].ids

    broken = []
    for html_file in sorted(book.rglob("*.html")):
        # mdBook's own pages (print view, 404) link by absolute site paths.
        if html_file.name in ("print.html", "404.html"):
            continue
        ids_of(html_file)
        for link in parsed[html_file].links:
            if external(link) or link.startswith("//"):
                continue
            path, _, fragment = urllib.parse.unquote(link).partition("#")
            target = (html_file.parent / path).resolve() if path else html_file
            if not target.exists():
                broken.append(f"{html_file.relative_to(book)}: {link}: no such file")
            elif fragment and target.suffix == ".html" and fragment not in ids_of(target):
                broken.append(f"{html_file.relative_to(book)}: {link}: no such anchor")
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if external(link):
                continue
            path, _, fragment = link.partition("#")
            target = (page.parent / path).resolve() if path else page.resolve()
            if not target.exists():
                broken.append(f"{page}: {link}: no such file")
                continue
            if fragment and target.suffix == ".md":
                try:
                    built = book / target.relative_to((book.parent / "src").resolve())
                except ValueError:
                    continue
                if fragment not in ids_of(built.with_suffix(".html")):
                    broken.append(f"{page}: {link}: no such anchor")
    for line in broken:
        print(f"broken link: {line}", file=sys.stderr)
    if broken:
        sys.exit(1)
    print(f"links: {sum(len(p.links) for p in parsed.values())} in the book and {len(pages)} pages, none broken")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), [pathlib.Path(p) for p in sys.argv[2:]])
