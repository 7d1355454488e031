"""Text rendering: numbers, tables and the training progress bar."""

from __future__ import annotations

import io

from lstm_stack_client import display

from protos.lstm_stack.v1 import model_pb2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def epoch(n: int, total: int, loss: float, val_loss: float | None = None) -> model_pb2.EpochEvent:
    event = model_pb2.EpochEvent(epoch=n, epochs=total, loss=loss)
    if val_loss is not None:
        event.val_loss = val_loss
    return event


def test_numbers_are_compact() -> None:
    assert display.number(80.0) == "80"
    assert display.number(0.0) == "0"
    assert display.number(-0.46875) == "-0.4688"
    assert display.number(12345.678, 1) == "12345.7"
    assert display.number(5.387e-07) == "5.387e-07"
    assert display.number(2.5e7) == "2.500e+07"
    assert display.row_text([50.0, 60.0, 70.0]) == "[50, 60, 70]"


def test_table_aligns_columns() -> None:
    text = display.table(["name", "n"], [["a", 1], ["long name", 100]], right=[1])
    assert text.splitlines() == ["name         n", "---------  ---", "a            1", "long name  100"]


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    out = Terminal()
    bar = display.ProgressBar(out, width=10)
    for n in range(1, 5):
        bar.update(epoch(n, 4, 1 / n, val_loss=2 / n))
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    last = text.split("\r")[-1]
    assert last.startswith("epoch 4/4 [##########] loss 0.25  val_loss 0.5")


def test_progress_bar_logs_a_few_lines_elsewhere() -> None:
    out = io.StringIO()
    bar = display.ProgressBar(out, width=10, log_lines=5)
    for n in range(1, 101):
        bar.update(epoch(n, 100, 1.0))
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/100", "20/100", "40/100", "60/100", "80/100", "100/100"]
    assert "\r" not in out.getvalue()
    assert lines[-1].startswith("epoch 100/100 [##########] loss 1 ")


def test_shape_table_marks_return_sequences() -> None:
    layers = [
        model_pb2.LayerReport(index=0, name="lstm_0", kind="lstm", output_shape_text="(None, 3, 10)", params=480,
                              return_sequences=True, activation="relu"),
        model_pb2.LayerReport(index=1, name="lstm_1", kind="lstm", output_shape_text="(None, 10)", params=840,
                              activation="relu"),
        model_pb2.LayerReport(index=2, name="head", kind="head", output_shape_text="(None, 1)", params=11),
    ]  # fmt: skip
    rows = display.shape_table(layers, [-1, 3, 1]).splitlines()
    assert "(None, 3, 1)" in rows[2]
    assert rows[3].split()[-1] == "yes" and rows[4].split()[-1] == "no"
    assert rows[5].split() == ["2", "head", "head", "(None,", "1)", "11"]
