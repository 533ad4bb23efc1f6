"""Over-long documents: every policy keeps the masking contract in what it writes."""

import numpy as np
import pytest

from sftdata.config import Overlong
from sftdata.records import Document
from sftdata.rejects import Reason, RecordError
from sftdata.truncation import fit_length


def _document() -> Document:
    # 12 tokens: a prompt turn ending at 3, a trained reply over tokens 3..9 ending at 10, a prompt turn after
    mask = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=np.uint8)
    return Document(5, np.arange(100, 112, dtype=np.int32), mask, turn_ends=(10,), boundaries=(3, 10, 12))


def test_a_piece_that_starts_inside_a_trained_turn_does_not_train_its_first_token():
    # the reply is longer than a piece: the second piece starts mid-reply, where the mask is 1; its first
    # token has nothing of the piece before it to be predicted from
    pieces = fit_length(_document(), 4, Overlong.SPLIT_TURNS)
    # the prompt-only pieces (tokens 0..2 and 10..11) hold no target and are left out
    assert [p.input_ids.tolist() for p in pieces] == [[103, 104, 105, 106], [107, 108, 109]]
    for piece in pieces:
        assert piece.loss_mask[0] == 0 and piece.truncated and piece.source_id == 5
    assert pieces[0].loss_mask.tolist() == [0, 1, 1, 1] and pieces[1].loss_mask.tolist() == [0, 1, 1]


def test_truncate_keeps_the_first_tokens_and_cut_turns_the_whole_turns_that_fit():
    doc = _document()
    (cut,) = fit_length(doc, 6, Overlong.TRUNCATE)
    assert cut.input_ids.tolist() == list(range(100, 106)) and cut.loss_mask.tolist() == [0, 0, 0, 1, 1, 1]
    (whole,) = fit_length(doc, 11, Overlong.CUT_TURNS)
    assert whole.num_tokens == 10 and whole.turn_ends == (10,)
    with pytest.raises(RecordError) as err:
        fit_length(doc, 9, Overlong.CUT_TURNS)
    assert err.value.reason is Reason.TOO_LONG and "ends at token 10" in err.value.detail
    with pytest.raises(RecordError) as err:
        fit_length(doc, 11, Overlong.REJECT)
    assert err.value.reason is Reason.TOO_LONG
