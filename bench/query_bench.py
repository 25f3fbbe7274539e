"""QueryImages with an attribute + type filter (acquisition == 1 and 3D, one image in eight),
pages of 100, sequential calls (c=1).

- first page: no token; the server counts the matches (total_count) and returns the facets.
- later page: the token of the page in the middle of the matches (reached once by paging
  through), sent again and again; keyset pagination should make it as cheap as any page.
"""

from __future__ import annotations

import time

from bench.client import QUERY_FILTERS, QUERY_FILTERS_JSON, QUERY_SELECTIVITY, ApiClient
from bench.interleave import ratio, turn_order
from bench.reference import RefClient
from bench.stats import percentile, summary_ms
from fractal.v2 import image_service_pb2

PAGE_SIZE = 100
WARMUP_CALLS = 3
WALK_PAGE_SIZE = 10_000


def _request(
    project_id: int, dataset_id: int, token: str = ""
) -> image_service_pb2.QueryImagesRequest:
    return image_service_pb2.QueryImagesRequest(
        project_id=project_id,
        dataset_id=dataset_id,
        filters=QUERY_FILTERS,
        page_size=PAGE_SIZE,
        page_token=token,
    )


async def _timed(
    client: ApiClient, request: image_service_pb2.QueryImagesRequest, calls: int, budget: float
) -> tuple[list[float], image_service_pb2.QueryImagesResponse]:
    """Latencies of ``calls`` identical calls, stopping early after ``budget`` seconds."""
    response = image_service_pb2.QueryImagesResponse()
    for _ in range(WARMUP_CALLS):
        response = await client.images.QueryImages(request, metadata=client.md)
    latencies: list[float] = []
    deadline = time.perf_counter() + budget
    for _ in range(calls):
        t0 = time.perf_counter()
        response = await client.images.QueryImages(request, metadata=client.md)
        latencies.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return latencies, response


def middle_page(total: int) -> int:
    """Index (from 0) of the page in the middle of ``total`` matches; at least the second."""
    return max(1, (total // PAGE_SIZE) // 2)


async def _page_token(client: ApiClient, project_id: int, dataset_id: int, page: int) -> str:
    """The token that fetches page ``page`` (from 0) of PAGE_SIZE, found by paging through once
    (in pages of up to WALK_PAGE_SIZE: a token holds a position in the list, not a page size)."""
    token = ""
    to_skip = page * PAGE_SIZE
    while to_skip > 0:
        step = min(to_skip, WALK_PAGE_SIZE)
        request = _request(project_id, dataset_id, token)
        request.page_size = step
        resp = await client.images.QueryImages(request, metadata=client.md)
        assert len(resp.images) == step and resp.next_page_token, "ran out of pages"
        token = resp.next_page_token
        to_skip -= step
    return token


async def bench_query(
    client: ApiClient, project_id: int, dataset_id: int, size: int, *, calls: int, budget: float
) -> dict[str, object]:
    first, response = await _timed(client, _request(project_id, dataset_id), calls, budget)
    total = int(response.total_count)
    expected = round(size * QUERY_SELECTIVITY)
    assert total == expected, f"total_count {total}, expected {expected}"
    assert len(response.images) == PAGE_SIZE
    facet_values = sum(len(v.values) for v in response.attributes.values())
    page = middle_page(total)
    token = await _page_token(client, project_id, dataset_id, page)
    later, later_resp = await _timed(client, _request(project_id, dataset_id, token), calls, budget)
    assert len(later_resp.images) == min(PAGE_SIZE, total - page * PAGE_SIZE)
    first_summary, later_summary = summary_ms(first), summary_ms(later)
    print(
        f"  QueryImages {size} images: first page p50 {first_summary['p50_ms']} ms, "
        f"later page p50 {later_summary['p50_ms']} ms",
        flush=True,
    )
    return {
        "images": size,
        "matching": total,
        "page_size": PAGE_SIZE,
        "facet_values_on_first_page": facet_values,
        "first_page": first_summary,
        "later_page": {**later_summary, "page_index": page},
    }


async def bench_query_pair(
    client: ApiClient,
    ours: tuple[int, int],
    reference: RefClient,
    ref_ids: tuple[int, int],
    size: int,
    *,
    calls: int,
    rounds: int = 4,
) -> dict[str, object]:
    """The same filter, first page and middle page (pages of 100), on ours and on the
    reference (its ``page`` numbers), ``rounds`` turns of ``calls // rounds`` calls a side."""
    total = round(size * QUERY_SELECTIVITY)
    page = middle_page(total)
    token = await _page_token(client, *ours, page)
    our_requests = {"first_page": _request(*ours), "later_page": _request(*ours, token)}
    ref_pages = {"first_page": 1, "later_page": page + 1}
    per_turn = max(1, calls // rounds)
    latencies: dict[str, dict[str, list[float]]] = {
        side: {"first_page": [], "later_page": []} for side in ("ours", "reference")
    }
    for which in ("first_page", "later_page"):
        # warm-up, not counted
        await client.images.QueryImages(our_requests[which], metadata=client.md)
        answer = reference.query_images(*ref_ids, QUERY_FILTERS_JSON, ref_pages[which], PAGE_SIZE)
        if answer["total_count"] != total:
            raise RuntimeError(f"reference total_count {answer['total_count']}, expected {total}")
        for index in range(rounds):
            for side in turn_order(["ours", "reference"], index):
                for _ in range(per_turn):
                    t0 = time.perf_counter()
                    if side == "ours":
                        await client.images.QueryImages(our_requests[which], metadata=client.md)
                    else:
                        reference.query_images(
                            *ref_ids, QUERY_FILTERS_JSON, ref_pages[which], PAGE_SIZE
                        )
                    latencies[side][which].append(time.perf_counter() - t0)
    result: dict[str, object] = {"images": size, "matching": total, "page_index": page}
    for side, series in latencies.items():
        result[side] = {which: summary_ms(values) for which, values in series.items()}
    for which in ("first_page", "later_page"):
        result[f"reference_over_ours_{which}"] = ratio(
            percentile(latencies["reference"][which], 50), percentile(latencies["ours"][which], 50)
        )
    print(
        f"  QueryImages {size} images, ours vs reference (p50 ms): "
        + ", ".join(
            f"{which} {percentile(latencies['ours'][which], 50) * 1000:.1f} / "
            f"{percentile(latencies['reference'][which], 50) * 1000:.1f}"
            for which in ("first_page", "later_page")
        ),
        flush=True,
    )
    return result
