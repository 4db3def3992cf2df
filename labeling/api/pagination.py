"""Limit / offset pagination with bounds: a huge offset is an empty page, not a database error."""

from rest_framework.pagination import LimitOffsetPagination

MAX_OFFSET = 2**62  # below every database's bigint limit; any offset past the data gives an empty page


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    max_limit = 1000

    def get_offset(self, request):
        return min(super().get_offset(request), MAX_OFFSET)
