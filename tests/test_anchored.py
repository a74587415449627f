"""The anchored copy: the line that sits between the cursor's neighbours elsewhere."""

from __future__ import annotations

from diffgemma_ls.anchored import Lines, anchored_completion

TESTS = """def test_one():
    client = make_client()
    client.connect()
    assert client.ready

def test_two():
    client = make_client()
    client.connect()
    assert client.ready
    client.close()
"""


def at(document: str, marker: str = "<|>") -> tuple[str, str]:
    prefix, suffix = document.split(marker)
    return prefix, suffix


def test_the_line_between_the_same_neighbours_is_copied() -> None:
    document = TESTS + "\ndef test_three():\n    client = make_client()\n    <|>\n    assert client.ready\n"
    assert anchored_completion(*at(document)) == "client.connect()"


def test_what_is_typed_must_start_the_copy() -> None:
    document = TESTS + "\ndef test_three():\n    client = make_client()\n    client.co<|>\n"
    assert anchored_completion(*at(document)) == "nnect()"
    assert anchored_completion(*at(document.replace("client.co<|>", "client.x<|>"))) == ""
    # a line that is only what is typed offers nothing
    assert anchored_completion(*at(document.replace("client.co<|>", "client.connect()<|>"))) == ""


def test_more_neighbours_matching_beat_a_nearer_line() -> None:
    document = (
        "a = 1\nb = 2\nc = 3\n\n"  # b, c after a, preceded by nothing alike
        "x = 0\nb = 2\nfar = 4\n\n"
        "z = 9\nb = 2\nnear = 5\n\n"
        "a = 1\nb = 2\n<|>\n"
    )
    assert anchored_completion(*at(document)) == "c = 3"  # two above match there, one elsewhere
    tie = "q = 1\nb = 2\nfar = 4\n\nb = 2\nnear = 5\n\nb = 2\n<|>\n"
    assert anchored_completion(*at(tie)) == "near = 5"  # on a tie, the nearest


def test_the_cursors_neighbours_are_not_each_others() -> None:
    # without the cursor's line between them, `a` would be the line above `b` and be offered
    assert anchored_completion(*at("a = 1\n<|>\nb = 2\n")) == ""
    assert anchored_completion(*at("<|>")) == ""  # no neighbours at all


def test_another_file_offers_a_copy_and_wins_only_with_more_matching() -> None:
    sibling = Lines.of(TESTS)
    document = "def test_four():\n    client = make_client()\n    client.connect()\n<|>\n"
    assert anchored_completion(*at(document)) == ""
    assert anchored_completion(*at(document), [sibling]) == "    assert client.ready"  # column 0
    own = "    client.connect()\n    print(client)\n\n" + document
    assert anchored_completion(*at(own), [sibling]) == "    assert client.ready"  # 2 above beat 1
    level = "    client = make_client()\n    client.connect()\n    print(client)\n\n" + document
    assert anchored_completion(*at(level), [sibling]) == "    print(client)"  # a tie: the document's


def test_indentation_and_blank_lines_do_not_break_a_match() -> None:
    document = "if x:\n\n        go()\n\n    stop()\n\nif x:\n    <|>\n    stop()\n"
    assert anchored_completion(*at(document)) == "go()"


def test_a_block_is_copied_to_its_end_and_indented_as_the_cursor() -> None:
    document = (
        "def area(shape):\n"
        '    if shape.kind == "square":\n'
        "        side = shape.size\n"
        "\n"
        "        return side * side\n"
        "    return 0\n"
        "\n\n"
        "class Shapes:\n"
        "    def perimeter(self, shape):\n"
        '        if shape.kind == "square":\n'
        "            <|>\n"
        "        return 0\n"
    )
    prefix, suffix = at(document)
    block = anchored_completion(prefix, suffix, block=True)
    assert block == "side = shape.size\n\n            return side * side"
    # a line request gets one line: the first (anchored above) and the last (below) tie, the nearer wins
    assert anchored_completion(prefix, suffix) == "return side * side"


def test_brackets_and_quotes_alone_anchor_nothing() -> None:
    function = 'def f(x):\n    """\n    Add one.\n    """\n    <|>\n'
    assert anchored_completion(*at(function)) == ""  # not the docstring's first line
    call = "run(\n    a,\n)\nstop()\n\nrun(\n    b,\n)\n<|>\n"
    assert anchored_completion(*at(call)) == ""  # `)` alone
    assert anchored_completion(*at(call.replace("    b,", "    a,"))) == "stop()"  # `)` and `a,`


def test_on_a_tie_the_nearest_below_the_cursor_wins_over_one_far_above() -> None:
    filler = "".join(f"v{i} = {i}\n" for i in range(12))
    document = "b = 2\nfar = 4\n" + filler + "b = 2\n<|>\nz = 0\n\n\n\n\n\nb = 2\nnear = 5\n"
    assert anchored_completion(*at(document)) == "near = 5"
