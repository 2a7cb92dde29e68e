"""`DateCalculator`: calendar and date arithmetic on ISO dates (YYYY-MM-DD), offline and deterministic.

Operations: add_days (date + days), diff_days (end - start in days), weekday (English name of the date's weekday),
add_months (calendar months, the day clipped to the month's last day: 2024-01-31 + 1 month = 2024-02-29).
"""
from __future__ import annotations

import calendar
import datetime as dt


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


class DateCalculator:
    name = "Calendar"
    description = ("Date arithmetic on ISO dates: add_days(date, days), diff_days(start, end), weekday(date), "
                   "add_months(date, months).")
    parameters = {"type": "object", "properties": {
        "operation": {"type": "string", "enum": ["add_days", "diff_days", "weekday", "add_months"]},
        "date": {"type": "string"}, "start": {"type": "string"}, "end": {"type": "string"},
        "days": {"type": "integer"}, "months": {"type": "integer"}},
        "required": ["operation"], "additionalProperties": False}

    def call(self, arguments: dict) -> str:
        op = arguments["operation"]
        if op == "add_days":
            return (_date(arguments["date"]) + dt.timedelta(days=arguments["days"])).isoformat()
        if op == "diff_days":
            return str((_date(arguments["end"]) - _date(arguments["start"])).days)
        if op == "weekday":
            return calendar.day_name[_date(arguments["date"]).weekday()]
        day = _date(arguments["date"])
        index = day.year * 12 + (day.month - 1) + arguments["months"]
        year, month = divmod(index, 12)
        last = calendar.monthrange(year, month + 1)[1]
        return dt.date(year, month + 1, min(day.day, last)).isoformat()
