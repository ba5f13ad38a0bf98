tag "a" when ((age)) > (1 + 2) * 3 - -4 / (5 - (6 - 7))
tag "b" when not (a and b) or not not c and (d or e)
tag "c" when (x between 1 and 2) and y not in [1, (2)] and (z is not missing)
tag "d" when - - age < + 3 and -(age) > -(-(1))
tag "e" when coalesce(age, (0)) * (count(orders where (amount > 1 or promo) and category == "a" within 30d)) >= 1
tag "f" when ((a or b)) and ((((c))))
