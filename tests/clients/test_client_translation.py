"""The translation client (REST sync and async, gRPC) against a real translation server."""

import json

import pytest

from clients import AsyncClient
from clients.cli import main
from clients.errors import InvalidRequestError, NotFoundError
from clients.translation import Translation
from services.kit.testing import ServerThread
from services.translation.service import create_service
from services.translation.settings import TranslationSettings

TEXTS = ["Hello world.", "How are you today?"]


@pytest.fixture(scope="module")
def server(models_dir):
    pairs = {p: str(models_dir / "translation" / f"wmt19-{p}") for p in ("en-de", "de-en")}
    settings = TranslationSettings(models=pairs, log_level="warning", default_max_new_tokens=12)
    with ServerThread(lambda: [create_service(settings)], settings) as running:
        yield running


def test_rest_translate_returns_typed_results(rest):
    one = rest.translation.translate("Hello world.", source_lang="en", target_lang="de")
    assert isinstance(one, Translation) and one.model == "wmt19-en-de"
    assert one.text and one.translations == [one.text] and one.alternatives is None
    many = rest.translation.translate(TEXTS, source_lang="en", target_lang="de")
    assert len(many.translations) == 2 and many.translations[0] == one.text


def test_rest_beam_options_give_alternatives(rest):
    result = rest.translation.translate(
        TEXTS, source_lang="en", target_lang="de", num_beams=3, num_return_sequences=2, max_new_tokens=8
    )
    assert [len(a) for a in result.alternatives] == [2, 2]
    assert result.translations == [a[0] for a in result.alternatives]


def test_rest_and_grpc_agree(rest, grpc_client):
    for text in TEXTS:
        via_rest = rest.translation.translate(text, source_lang="de", target_lang="en", num_beams=2)
        via_grpc = grpc_client.translation.translate(text, source_lang="de", target_lang="en", num_beams=2)
        assert via_rest == via_grpc


def test_models_are_listed_over_both_protocols(rest, grpc_client):
    pairs = {m.pair for m in rest.translation.models()}
    assert pairs == {"en-de", "de-en"}
    assert {m.pair for m in grpc_client.translation.models()} == pairs
    assert {m.service for m in rest.models()} == {"translation"}


def test_server_errors_arrive_typed_with_the_servers_message(rest, grpc_client):
    with pytest.raises(InvalidRequestError) as caught:
        rest.translation.translate("", source_lang="en", target_lang="de")
    assert caught.value.status == 400 and caught.value.param == "text"
    assert "must not be empty" in caught.value.message
    with pytest.raises(NotFoundError, match="available pairs: de-en, en-de"):
        rest.translation.translate("Hallo", source_lang="fr", target_lang="de")
    with pytest.raises(InvalidRequestError, match="num_beams") as caught:
        grpc_client.translation.translate("Hello", source_lang="en", target_lang="de", num_beams=99)
    assert caught.value.grpc_code.name == "INVALID_ARGUMENT"
    with pytest.raises(NotFoundError):
        grpc_client.translation.translate("Hallo", source_lang="fr", target_lang="de")


async def test_async_client_translates_concurrently(server, rest):
    import asyncio

    async with AsyncClient(server.rest_url, timeout=60) as client:
        results = await asyncio.gather(
            *(client.translation.translate(t, source_lang="en", target_lang="de") for t in TEXTS)
        )
        assert {m.pair for m in await client.translation.models()} == {"en-de", "de-en"}
    assert [r.text for r in results] == rest.translation.translate(
        TEXTS, source_lang="en", target_lang="de"
    ).translations


# -- the command line on the same server ----------------------------------------------------------


def test_cli_translates_over_rest_and_grpc(server, rest, capsys):
    expected = rest.translation.translate(TEXTS, source_lang="en", target_lang="de").translations
    assert main(["--url", server.rest_url, "translate", *TEXTS, "--from", "en", "--to", "de"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    code = main(
        [
            "translate",
            *TEXTS,
            "--from",
            "en",
            "--to",
            "de",
            "--protocol",
            "grpc",
            "--grpc",
            server.grpc_target,
        ]
    )
    assert code == 0 and capsys.readouterr().out.splitlines() == expected


def test_cli_prints_the_servers_message_on_400(server, capsys):
    code = main(["--url", server.rest_url, "translate", " ", "--from", "en", "--to", "de"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("modelserve: server error: 400 invalid_argument: text[0]: must not be empty")


def test_cli_lists_models(server, capsys):
    assert main(["models", "--url", server.rest_url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(m["service"], m["source_lang"], m["target_lang"]) for m in listed} == {
        ("translation", "en", "de"),
        ("translation", "de", "en"),
    }
