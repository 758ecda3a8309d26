"""The step buffer's slots: which ids they hold, and whether in id order."""

import numpy as np
import pytest

from shardemb.errors import CapacityError
from shardemb.keras.slots import StepSlots


def test_first_pass_gives_slots_in_id_order():
    slots = StepSlots(8)
    pos, new_slots, new_ids = slots.assign(np.array([7, 3, 7, 5]))
    assert pos.tolist() == [2, 0, 2, 1]
    assert new_slots.tolist() == [0, 1, 2] and new_ids.tolist() == [3, 5, 7]
    assert slots.in_id_order
    ids, by_id = slots.sorted_view()
    assert ids.tolist() == [3, 5, 7] and by_id.tolist() == [0, 1, 2]


def test_a_later_pass_with_new_ids_is_not_in_id_order_and_restore_undoes_it():
    slots = StepSlots(8)
    slots.assign(np.array([7, 3]))
    state = slots.snapshot()
    slots.assign(np.array([3, 7]))  # nothing new: the order holds
    assert slots.in_id_order
    pos = slots.assign(np.array([1, 7]))[0]  # 1 is the smallest, but gets slot 2
    assert pos.tolist() == [2, 1] and not slots.in_id_order
    ids, by_id = slots.sorted_view()
    assert ids.tolist() == [1, 3, 7] and by_id.tolist() == [2, 0, 1]
    assert slots.ids(by_id).tolist() == [1, 3, 7]
    slots.restore(state)
    assert slots.in_id_order and slots.used == 2
    slots.reset()
    assert slots.in_id_order and slots.used == 0


def test_ids_that_do_not_fit_raise_and_change_nothing():
    slots = StepSlots(3)
    slots.assign(np.array([4, 2]))
    with pytest.raises(CapacityError, match="needs 4 distinct ids"):
        slots.assign(np.array([1, 9]))
    assert slots.used == 2 and slots.in_id_order
    assert slots.sorted_view()[0].tolist() == [2, 4]
