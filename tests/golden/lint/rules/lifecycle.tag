# 生命周期: lifecycle tags
let 高消费 = sum(orders.amount) >= 5000
let 未使用 = count(orders within 7d)

group "生命周期" exclusive {
  tag "新客" when count(orders) == 0
  tag "老客" when count(orders) >= 1 and tag("沉睡唤醒")
}

tag "沉睡唤醒" when days_since(last_active_at) >= 90 and not tag("老客")
tag "高价值客户" when 高消费
tag "最近三十天活跃高价值" when exists(events within 30d) and 高消费
