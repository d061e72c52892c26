"""Editing a message in the example app (``edit_message = true``), on both stacks.

Chainlit handles an edit by updating the edited user message and calling ``Message.remove()``
(``delete_step``) for every later message of the chat context, then running ``on_message`` again.
A removed message takes its elements with it: the PNG attached to the second user message and the
``cl.Text`` of each removed reply must leave the database *and* the storage, while the thread
itself (and what it keeps) is unharmed after a reload.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from playwright.async_api import expect

from .conftest import App, Artifacts, Stack, element_keys
from .scenario import BOT_MSG, IMAGE_NAME, USER_MSG, Scenario, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EDITED = "Hello again, edited"


@pytest.mark.asyncio(loop_scope="session")
async def test_edit_message(stack: Stack, app: App, browser: Any, artifacts: Artifacts) -> None:
    sc = Scenario(stack, app, browser, artifacts)
    try:
        context = await sc.new_context()
        page = await sc.new_page(context, "alice")

        async with sc.step("alice sends a message, then one with a PNG"):
            await sc.login(page, "alice")
            thread_id = await sc.two_messages(page)
            prefix = f"threads/{thread_id}/"
            before = await eventually(
                lambda: element_keys(stack, thread_id), lambda keys: len(keys) == 3,
                what="element keys (PNG + two Text elements)",
            )
            assert [k for k in stack.list_objects() if k.startswith(prefix)] == before

        async with sc.step("edit the first message: later messages and their files go"):
            first = page.locator(USER_MSG).nth(0)
            await first.hover()
            await first.locator(".edit-message").click()
            await page.locator("#edit-chat-input").fill(EDITED)
            await page.locator(".confirm-edit").click()
            await expect(page.locator(f"{USER_MSG} .message-content")).to_have_text([EDITED])
            await expect(page.locator(BOT_MSG)).to_have_count(1)
            await expect(page.locator(BOT_MSG)).to_contain_text(f"You said: {EDITED}")

            # Left: the new reply's Text element only, in the database and in the storage.
            after = await eventually(
                lambda: element_keys(stack, thread_id),
                lambda keys: len(keys) == 1 and keys[0] not in before,
                what="element keys after the edit",
            )
            await eventually(
                lambda: _objects(stack, prefix), lambda keys: keys == after,
                what="stored objects after the edit",
            )
            assert [m for m in stack.list_meta() if any(k in m for k in before)] == []

        async with sc.step("reload: the edited conversation, without the image"):
            await page.reload()
            await expect(page.locator(f"{USER_MSG} .message-content")).to_have_text([EDITED])
            await expect(page.locator(BOT_MSG)).to_have_count(1)
            await expect(page.locator(BOT_MSG)).to_contain_text(
                f"You said: {EDITED}"
            )
            await expect(page.locator(BOT_MSG)).to_contain_text(
                f"Turn 3 Message: {EDITED} Files: no files"  # the session counted 2 turns before
            )
            await expect(page.locator(f"img[alt='{IMAGE_NAME}']")).to_have_count(0)
    finally:
        for context in sc.contexts:
            with contextlib.suppress(Exception):
                await context.close()


async def _objects(stack: Stack, prefix: str) -> list[str]:
    return [k for k in stack.list_objects() if k.startswith(prefix)]
