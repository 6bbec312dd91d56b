"""The small building blocks: IoV, accumulators, local databases, job splitting, the graph."""

from __future__ import annotations

from pathlib import Path

import hist
import pytest

from b2cal.caf.accumulator import Accumulator, Column, merge_runs, sum_runs
from b2cal.caf.calibration import Calibration
from b2cal.caf.graph import topological_order, upstream, with_dependencies
from b2cal.caf.jobs import split_files
from b2cal.catalog.inputs import InputFile
from b2cal.catalog.naming import parse_data_file_name
from b2cal.core.iov import ExpRun, IoV, tile_iovs
from b2cal.core.localdb import LocalDatabase, payload_bytes, read_database_txt, write_local_database
from b2cal.errors import B2CalError

pytestmark = pytest.mark.unit


def test_iov_conventions() -> None:
    assert IoV(1, 5, 1, -1).contains(ExpRun(1, 10**6))
    assert not IoV(1, 5, 1, -1).contains(ExpRun(2, 0))
    assert IoV(1, 5, -1, -1).contains(ExpRun(99, 0))
    assert not IoV(1, 5, 1, 9).contains(ExpRun(1, 4))
    assert IoV.parse("1,2,3,4") == IoV(1, 2, 3, 4)
    assert str(IoV(1, 2, -1, -1)) == "1,2,-1,-1"
    assert IoV(1, 1, 1, 5).overlaps(IoV(1, 5, 1, 9))
    assert not IoV(1, 1, 1, 4).overlaps(IoV(1, 5, 1, 9))
    assert ExpRun(2, 0).previous() == ExpRun(1, -1)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "1,5,1,4", "1,2,-1,5", "-1,0,1,1"])
def test_bad_iovs_are_refused(text: str) -> None:
    with pytest.raises(B2CalError):
        IoV.parse(text)


def test_tile_iovs() -> None:
    starts = [ExpRun(1, 1), ExpRun(1, 4), ExpRun(2, 0)]
    assert [str(i) for i in tile_iovs(starts, ExpRun(2, 7))] == ["1,1,1,3", "1,4,1,-1", "2,0,2,7"]
    assert str(tile_iovs(starts, ExpRun(2, 7), open_ended=True)[-1]) == "2,0,-1,-1"
    with pytest.raises(B2CalError):
        tile_iovs([ExpRun(1, 4), ExpRun(1, 4)], ExpRun(1, 9))


def test_accumulators_merge_by_addition_in_order() -> None:
    h = hist.Hist.new.Reg(4, 0, 4).Double()
    a = Accumulator(n=1, h=h.copy().fill([0.5]), v=Column([1.0]))
    b = Accumulator(n=2, h=h.copy().fill([1.5, 1.5]), v=Column([2.0, 3.0]), only_b=7)
    total = a + b
    assert total["n"] == 3 and total["only_b"] == 7
    assert list(total["h"].values()) == [1, 2, 0, 0]
    assert total["v"] == Column([1.0, 2.0, 3.0])
    per_run = merge_runs([{ExpRun(1, 2): a}, {ExpRun(1, 1): b, ExpRun(1, 2): b}])
    assert list(per_run) == [ExpRun(1, 1), ExpRun(1, 2)]
    assert per_run[ExpRun(1, 2)]["n"] == 3
    assert sum_runs(per_run, [ExpRun(1, 2), ExpRun(1, 1)])["v"] == Column([2, 3, 1, 2, 3])


def test_local_database_round_trip_and_lookup(tmp_path: Path) -> None:
    docs = [{"x": 0.1 + 0.2}, {"x": 1e-300}, {"x": -3.0}]
    iovs = [IoV(1, 5, 1, 9), IoV(1, 0, 1, 4), IoV(1, 10, -1, -1)]
    entries = write_local_database(tmp_path, [("P", i, d) for i, d in zip(iovs, docs, strict=True)])
    lines = (tmp_path / "database.txt").read_text().splitlines()
    assert lines == ["dbstore/P 1 1,0,1,4", "dbstore/P 2 1,5,1,9", "dbstore/P 3 1,10,-1,-1"]
    assert [e.revision for e in read_database_txt(tmp_path)] == [1, 2, 3]
    db = LocalDatabase(tmp_path)
    assert db.payload("P", ExpRun(1, 7)) == {"x": 0.1 + 0.2}  # floats round-trip exactly
    assert db.payload("P", ExpRun(7, 0)) == {"x": -3.0}
    assert db.payload("Q", ExpRun(1, 7)) is None
    assert entries[0].checksum == LocalDatabase(tmp_path).entries[0].checksum


def test_payload_bytes_are_canonical_and_refuse_nan() -> None:
    assert payload_bytes({"b": 1, "a": [1.5]}) == payload_bytes({"a": [1.5], "b": 1})
    with pytest.raises(B2CalError, match="not finite"):
        payload_bytes({"a": float("nan")})


def test_malformed_database_txt_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "database.txt").write_text("dbstore/P 1 1,0,1,4\nnonsense here\n")
    with pytest.raises(B2CalError, match=r"database\.txt:2"):
        read_database_txt(tmp_path)


def files(n: int) -> list[InputFile]:
    return [
        InputFile(
            exp=1,
            run=r // 3,
            stream="bhabha",
            path=Path(f"bhabha.e0001.r{r // 3:05d}.f{r % 3:05d}.root"),
        )
        for r in range(n)
    ]


def test_split_files_is_independent_of_everything_but_its_arguments() -> None:
    assert [len(j) for j in split_files(files(10), 4)] == [4, 4, 2]
    assert [len(j) for j in split_files(files(10), 1, max_jobs=3)] == [4, 4, 2]
    assert split_files(list(reversed(files(10))), 4) == split_files(files(10), 4)
    assert split_files([], 4) == []


def test_data_file_names() -> None:
    info = parse_data_file_name(Path("/s/e0001/r00012/mumu/mumu.e0001.r00012.f00003.root"))
    assert info is not None and (info.exp, info.run, info.stream, info.index) == (1, 12, "mumu", 3)
    assert parse_data_file_name(Path("notes.txt")) is None


def graph(**deps: tuple[str, ...]) -> dict[str, Calibration]:
    from counting import counting

    return {n: counting().model_copy(update={"name": n, "depends_on": d}) for n, d in deps.items()}


def test_graph_order_upstream_and_cycles() -> None:
    cals = graph(A=(), B=("A",), C=("B",), D=())
    assert topological_order(cals) == ["A", "B", "C", "D"]
    assert upstream("C", cals) == ["B", "A"]
    found, added = with_dependencies(["C"], cals.__getitem__)
    assert sorted(found) == ["A", "B", "C"] and added == ["B", "A"]
    with pytest.raises(B2CalError, match="dependency cycle: A -> C -> B -> A"):
        topological_order(graph(A=("C",), B=("A",), C=("B",)))
    with pytest.raises(B2CalError, match="depends on 'Z'"):
        topological_order(graph(A=("Z",)))


def test_calibration_declaration_is_validated() -> None:
    from counting import counting

    base = counting()
    with pytest.raises(ValueError, match="depend on itself"):
        Calibration(**{**dict(base), "depends_on": ("Counting",)})
    with pytest.raises(ValueError):
        Calibration(**{**dict(base), "max_iterations": 0})
    with pytest.raises(ValueError):
        Calibration(**{**dict(base), "name": "has space"})
