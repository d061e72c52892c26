"""What the e2e scenarios share: the conversation they type, a PNG, and :class:`Scenario`, which
drives the example app's pages step by step and saves artifacts when a step fails."""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from playwright.async_api import expect

from .conftest import STEP_RESULTS, App, Artifacts, Stack

T = TypeVar("T")

FIRST = "Hello from alice"
SECOND = "Here is a picture"
COMMENT = "Too short, please explain more."
NEW_NAME = "Renamed by alice"
IMAGE_NAME = "pixel.png"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

USER_MSG = ".step[data-step-type=user_message]"
BOT_MSG = ".step[data-step-type=assistant_message]"
TOOL_STEP = ".step[data-step-type=tool]"

expect.set_options(timeout=20_000)


def make_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG, small and built here (no fixture file)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes([200, 30, 60]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


PNG = make_png()


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, timeout: float = 15,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``accept`` holds; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        await asyncio.sleep(0.25)


class Scenario:
    def __init__(self, stack: Stack, app: App, browser: Any, artifacts: Artifacts) -> None:
        self.stack, self.app, self.browser, self.artifacts = stack, app, browser, artifacts
        artifacts.app = app
        self.results = STEP_RESULTS.setdefault(f"{artifacts.test_id}", [])
        self.contexts: list[Any] = []

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            self.results.append((name, "FAIL", time.monotonic() - started))
            await self.artifacts.save(f"step {name!r} failed: {exc!r}")
            raise
        self.results.append((name, "pass", time.monotonic() - started))

    # -- browser helpers ------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.app.url + path

    async def new_context(self) -> Any:
        context = await self.browser.new_context(
            base_url=self.app.url, viewport={"width": 1280, "height": 900}, locale="en-US",
            timezone_id="UTC",
        )
        # The share dialog copies the link to the clipboard before it reports success.
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.app.url)
        self.contexts.append(context)
        return context

    async def new_page(self, context: Any, who: str) -> Any:
        return self.artifacts.watch(who, await context.new_page())

    async def login(self, page: Any, user: str) -> None:
        if not page.url.endswith("/login"):
            await page.goto(self.url("/"))
        await expect(page).to_have_url(self.url("/login"))
        await page.locator("#email").fill(user)
        await page.locator("#password").fill(self.stack.passwords[user])
        await page.locator("#password").press("Enter")
        await expect(page).to_have_url(self.url("/"))
        await expect(page.locator("#chat-input")).to_be_editable()

    async def send(self, page: Any, text: str) -> None:
        await page.locator("#chat-input").fill(text)
        await expect(page.locator("#chat-submit")).to_be_enabled()
        await page.locator("#chat-submit").click()

    def thread_item(self, page: Any, thread_id: str) -> Any:
        return page.locator(f"#thread-history li#thread-{thread_id}")

    async def thread_menu(self, page: Any, thread_id: str, action: str) -> None:
        item = self.thread_item(page, thread_id)
        await item.hover()
        await item.locator("#thread-options").click()
        await page.locator(f"#{action}-thread").click()

    async def open_from_sidebar(self, page: Any, thread_id: str) -> None:
        """Start from a new chat and open the thread through its sidebar entry (a resume)."""
        await page.goto(self.url("/"))
        await self.thread_item(page, thread_id).locator("a").click()
        await expect(page).to_have_url(self.url(f"/thread/{thread_id}"))
        await expect(page.locator(USER_MSG)).to_have_count(2)

    async def expect_conversation(self, page: Any) -> None:
        """The whole conversation as the page shows it after a reload (resumed or shared)."""
        await expect(page.locator(USER_MSG)).to_have_count(2)
        await expect(page.locator(f"{USER_MSG} .message-content")).to_have_text([FIRST, SECOND])
        await expect(page.locator(BOT_MSG)).to_have_count(2)
        bots = page.locator(BOT_MSG)
        await expect(bots.nth(0)).to_contain_text(f"You said: {FIRST}")
        # (Playwright compares text with whitespace collapsed to single spaces.)
        await expect(bots.nth(1)).to_contain_text(
            f"You said: {SECOND} Received 1 file(s): {IMAGE_NAME} (image/png, {len(PNG)} bytes)"
        )
        # Each reply's Text element, whose content the page reads back from storage.
        await expect(bots.nth(0)).to_contain_text(f"Turn 1 Message: {FIRST} Files: no files")
        await expect(bots.nth(1)).to_contain_text(
            f"Turn 2 Message: {SECOND} Files: {IMAGE_NAME} (image/png, {len(PNG)} bytes)"
        )
        await expect(page.locator(TOOL_STEP)).to_have_count(2)
        await expect(page.locator(TOOL_STEP)).to_have_text(["Used think", "Used think"])
        await self.expect_image(page)

    async def expect_image(self, page: Any) -> str:
        selector = f"{USER_MSG} img[alt='{IMAGE_NAME}']"
        await expect(page.locator(selector)).to_have_count(1)

        async def loaded() -> Any:
            # The <img> is lazy (loads once scrolled into view) and React may replace it while
            # the thread settles, so look it up afresh on every poll.
            return await page.evaluate(
                """(selector) => {
                    const img = document.querySelector(selector);
                    if (!img) return null;
                    img.scrollIntoView({block: "center"});
                    return img.complete ? [img.naturalWidth, img.naturalHeight] : null;
                }""",
                selector,
            )

        await eventually(loaded, lambda size: size == [3, 2], what="decoded image size")
        src: str = await page.locator(selector).evaluate("img => img.src")
        prefix = self.stack.url_prefix
        expected = (self.app.url + prefix if prefix.startswith("/") else prefix)
        assert src.startswith(expected), src
        assert "/project/file/" not in src, src
        return src

    async def two_messages(self, page: Any) -> str:
        """Send FIRST, then SECOND with the PNG attached; return the thread id from the URL."""
        await self.send(page, FIRST)
        await expect(page.locator(BOT_MSG)).to_have_count(1)
        await expect(page.locator(BOT_MSG)).to_contain_text(f"You said: {FIRST}")
        await expect(page).to_have_url(re.compile(re.escape(self.url("/thread/")) + UUID + "$"))
        thread_id: str = page.url.rsplit("/", 1)[1]

        await page.locator("#upload-button-input").set_input_files(
            files=[{"name": IMAGE_NAME, "mimeType": "image/png", "buffer": PNG}]
        )
        await expect(page.locator(f"#attachments img[alt='{IMAGE_NAME}']")).to_have_count(1)
        await self.send(page, SECOND)  # the submit button waits for the upload to finish
        await expect(page.locator(BOT_MSG)).to_have_count(2)
        await expect(page.locator(BOT_MSG).nth(1)).to_contain_text(
            f"Received 1 file(s): {IMAGE_NAME} (image/png, {len(PNG)} bytes)"
        )
        await expect(page.locator(TOOL_STEP)).to_have_count(2)
        await expect(page.locator(f"{USER_MSG} .message-content")).to_have_text([FIRST, SECOND])
        return thread_id

    async def search(self, page: Any, queries: list[tuple[str, list[str]]]) -> None:
        """Type each query in the sidebar's search dialog and expect exactly those thread names.

        Start with a query that finds nothing: the dialog first lists the unfiltered threads,
        which would satisfy a positive expectation before the search has even run.
        """
        await page.locator("#search-chats-button").click()
        dialog = page.get_by_role("dialog")
        for query, names in queries:
            await dialog.locator("[cmdk-input]").fill(query)
            await expect(dialog.locator("[cmdk-item]")).to_have_text(names)
            if not names:
                await expect(dialog).to_contain_text("No threads found")
        await page.keyboard.press("Escape")
        await expect(page.get_by_role("dialog")).to_have_count(0)
