"""Names the SDK shipped before the ViT spelling was made consistent keep resolving, with a warning."""

import pytest

import clients.vit


@pytest.mark.parametrize(
    ("old", "new"),
    [("VitClient", "ViTClient"), ("AsyncVitClient", "AsyncViTClient"), ("VitGrpcClient", "ViTGrpcClient")],
)
def test_old_vit_client_names_warn_and_resolve_to_the_new_class(old, new):
    with pytest.warns(DeprecationWarning, match=new):
        assert getattr(clients.vit, old) is getattr(clients.vit, new)


def test_unknown_names_still_raise_attribute_error():
    with pytest.raises(AttributeError):
        clients.vit.NoSuchClient  # noqa: B018
