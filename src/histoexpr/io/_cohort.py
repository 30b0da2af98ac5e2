"""A cohort of slides: one SpatialData per slide and one table of bulk expression."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData


class Cohort(Mapping):
    """Slides and their slide-level (bulk) data, kept in step.

    A read-only mapping from slide id to :class:`spatialdata.SpatialData`, in the order of
    ``bulk.obs_names``, together with ``bulk``: slides x genes bulk expression whose ``obs`` holds
    the slide-level labels.

    Parameters
    ----------
    slides
        The sections, keyed by slide id.
    bulk
        One row per slide; its ``obs_names`` must be exactly the slide ids (any order).

    Examples
    --------
    >>> import histoexpr as hx
    >>> cohort = hx.datasets.synthetic_cohort(4, seed=0)
    >>> for slide_id, sdata in cohort.items():
    ...     label = cohort.bulk.obs.loc[slide_id, "diagnosis"]

    """

    def __init__(self, slides: Mapping[str, SpatialData], bulk: AnnData) -> None:
        from anndata import AnnData

        if not isinstance(bulk, AnnData):
            raise TypeError(
                f"bulk must be an AnnData (slides x genes), got {type(bulk).__name__}."
            )
        if not isinstance(slides, Mapping):
            raise TypeError(
                "slides must be a mapping from slide id to SpatialData, "
                f"got {type(slides).__name__}."
            )
        ids = list(bulk.obs_names)
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(
                f"bulk.obs_names has duplicated slide ids {duplicated}; make them unique."
            )
        no_slide = [i for i in ids if i not in slides]
        no_bulk = [i for i in slides if i not in set(ids)]
        if no_slide or no_bulk:
            parts = []
            if no_slide:
                parts.append(f"bulk rows without a slide: {_preview(no_slide)}")
            if no_bulk:
                parts.append(f"slides without a bulk row: {_preview(no_bulk)}")
            raise ValueError(
                "The slide ids of `slides` and `bulk.obs_names` must match exactly; "
                + "; ".join(parts) + ". Subset both to the same ids."
            )
        self._slides = {i: slides[i] for i in ids}
        self._bulk = bulk

    @property
    def slides(self) -> dict[str, SpatialData]:
        """The sections, keyed by slide id, in the order of ``bulk.obs_names``."""
        return dict(self._slides)

    @property
    def bulk(self) -> AnnData:
        """Bulk expression, slides x genes, with the slide-level labels in ``obs``."""
        return self._bulk

    @property
    def ids(self) -> list[str]:
        """The slide ids, in order."""
        return list(self._slides)

    def __getitem__(self, slide_id: str) -> SpatialData:
        try:
            return self._slides[slide_id]
        except KeyError:
            raise KeyError(
                f"The cohort has no slide {slide_id!r}; its slides are {_preview(self.ids)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._slides)

    def __len__(self) -> int:
        return len(self._slides)

    def subset(self, ids: Iterable[str]) -> Cohort:
        """A cohort of some of the slides, in the order given.

        Parameters
        ----------
        ids
            Slide ids to keep.

        Returns
        -------
        A new cohort sharing the slides' SpatialData objects and a copy of their bulk rows.

        """
        ids = [ids] if isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i not in self._slides]
        if unknown:
            raise KeyError(
                f"Unknown slide ids {_preview(unknown)}; "
                f"the cohort's slides are {_preview(self.ids)}."
            )
        return Cohort({i: self._slides[i] for i in ids}, self._bulk[ids].copy())

    def __repr__(self) -> str:
        obs = ", ".join(self._bulk.obs.columns) or "none"
        return (
            f"Cohort of {len(self)} slides x {self._bulk.n_vars} genes\n"
            f"    slides: {_preview(self.ids)}\n"
            f"    bulk.obs: {obs}"
        )


def _preview(ids: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:n])
    return f"[{shown}, ...] ({len(ids)})" if len(ids) > n else f"[{shown}]"
