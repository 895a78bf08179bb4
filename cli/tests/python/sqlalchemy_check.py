"""sqlalchemy-dqlite against an atoll node: a table created from an ORM model, rows added in a
session, queried back through the ORM with a filter and an aggregate. Usage:
sqlalchemy_check.py HOST:PORT. Prints `all sqlalchemy checks passed` last."""

import sys

from sqlalchemy import Boolean, Integer, LargeBinary, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

address = sys.argv[1]


class Base(DeclarativeBase):
    pass


class Sensor(Base):
    __tablename__ = "sensors"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    celsius: Mapped[float]
    active: Mapped[bool] = mapped_column(Boolean)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


engine = create_engine(f"dqlite://{address}/orm")
Base.metadata.create_all(engine)

with Session(engine) as session:
    session.add_all(
        [
            Sensor(name="greenhouse", celsius=21.5, active=True, blob=b"\x00\x01"),
            Sensor(name="cellar", celsius=12.25, active=False, blob=None),
            Sensor(name="attic", celsius=30.0, active=True, blob=b""),
        ]
    )
    session.commit()

with Session(engine) as session:
    warm = session.scalars(
        select(Sensor).where(Sensor.celsius > 20).order_by(Sensor.name)
    ).all()
    names = [s.name for s in warm]
    assert names == ["attic", "greenhouse"], names
    assert warm[1].blob == b"\x00\x01", warm[1].blob
    assert warm[0].active is True, warm[0].active
    count, average = session.execute(select(func.count(Sensor.id), func.avg(Sensor.celsius))).one()
    assert count == 3 and abs(average - 21.25) < 1e-9, (count, average)
    cellar = session.scalars(select(Sensor).where(Sensor.name == "cellar")).one()
    assert cellar.active is False and cellar.blob is None, (cellar.active, cellar.blob)
    cellar.celsius = 13.0
    session.commit()

with Session(engine) as session:
    value = session.scalar(select(Sensor.celsius).where(Sensor.name == "cellar"))
    assert value == 13.0, value
print("all sqlalchemy checks passed")
