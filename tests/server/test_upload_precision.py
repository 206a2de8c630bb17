"""float16 uploads only when float16 can hold every acceptable update; otherwise the round asks for float32."""

from __future__ import annotations

import pytest
import torch

from common.federation import protocol as p
from common.federation.rounds import Status
from server.model import ServerModel
from server.validation import FLOAT16_MAX, round_upload_dtype
from tests.server.federation_helpers import exchanged_keys, federate, final_adapter, run_config, stand_ins


def test_the_round_dtype_leaves_room_for_the_update_bound():
    state = {"a": torch.tensor([1.0, -64000.0]), "b": torch.zeros(0)}
    fits = round_upload_dtype(state, ["a", "b"], configured=torch.float16, max_update_norm=FLOAT16_MAX - 64000)
    assert fits == torch.float16
    too_big = round_upload_dtype(state, ["a", "b"], configured=torch.float16, max_update_norm=FLOAT16_MAX - 63999)
    assert too_big == torch.float32
    assert round_upload_dtype(state, ["a"], configured=torch.float32, max_update_norm=1.0) == torch.float32
    assert round_upload_dtype({}, [], configured=torch.float16, max_update_norm=1.0) == torch.float16


class LargeEntryModel(ServerModel):
    """The server model with one global entry of 70000 (above float16's largest value, 65504)."""

    key = ""

    def initial_state(self) -> dict[str, torch.Tensor]:
        state = super().initial_state()
        state[self.key] = state[self.key].clone()
        state[self.key].view(-1)[0] = 70000.0
        return state


@pytest.mark.parametrize("entry", [70000.0, None])
def test_a_global_entry_float16_cannot_hold_makes_the_round_upload_float32(tiny_model_dir, tmp_path, entry):
    config = run_config(tiny_model_dir, tmp_path / "run", num_rounds=2, upload_precision="float16")
    keys = exchanged_keys(config)
    model = LargeEntryModel(config) if entry is not None else ServerModel(config)
    LargeEntryModel.key = keys[0]
    sites = stand_ins([1, 2, 3], keys)
    result = federate(config, sites, model=model)
    assert result.completed_rounds == 2
    assert all(site.status is Status.TRAINED for record in result.history for site in record.sites)
    expected = "float32" if entry is not None else "float16"
    assert [r.upload_precision for r in result.history] == [expected, expected]
    assert all(m.content.config_records[p.CONFIG][p.UPLOAD_PRECISION] == expected for m in sites[1].requests)
    if entry is not None:
        assert final_adapter(config)[keys[0]].view(-1)[0] == pytest.approx(70000.04, abs=1e-2)
